"""What the repository itself promises: no machine's folders in committed artifacts, one dependency list,
console scripts that resolve, package data that ships, LFS rules for the Hugging Face Hub."""
import fnmatch
import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_SUFFIXES = (".json", ".md", ".csv", ".toml")
# An absolute path into a machine's private folders: not preceded by a word character or a dot
# (so "../shared/…", "runs/tmp/…" and URLs such as "https://host/home/…" are not flagged).
MACHINE_PATH = re.compile(r"(?<![\w.\-/])/(?:work|tmp|root|home|mnt)/[^\s\"'`,)\]]*")


def machine_paths(text: str) -> list[str]:
    """Absolute paths into /work, /tmp, /root, /home or /mnt found in ``text``."""
    return MACHINE_PATH.findall(text)


def repo_files() -> list[str]:
    """Tracked files plus new ones not ignored (what the next commit can hold), relative to the repo root."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to check")
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return [name for name in out.splitlines() if (REPO / name).is_file()]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def normalized(requirement: str) -> str:
    """A requirement in one spelling: lower-case name with dashes, sorted specifiers, sorted extras."""
    req = Requirement(requirement)
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return name + extras + ",".join(sorted(str(spec) for spec in req.specifier))


@pytest.mark.parametrize("text, found", [
    ('"data_dir": "/work/data/kaggle_3m"', ["/work/data/kaggle_3m"]),
    ('"model": "/tmp/art/best",', ["/tmp/art/best"]),
    ("weights in `/home/alice/runs/x` and /mnt/disk/y", ["/home/alice/runs/x", "/mnt/disk/y"]),
    ("'/root/.cache/huggingface'", ["/root/.cache/huggingface"]),
    ('"data_dir": "../shared/data/lgg-test", "out_dir": "runs/tmp/a", "data": "$DATA"', []),
    ("see https://example.org/home/page and runs/work/x", []),
])
def test_machine_path_pattern(text: str, found: list[str]) -> None:
    assert machine_paths(text) == found


def test_no_machine_paths_in_committed_artifacts() -> None:
    files = [name for name in repo_files() if name.endswith(ARTIFACT_SUFFIXES)]
    assert "assets/models/unet/train_config.json" in files and "README.md" in files
    offenders = {name: hits for name in files
                 if (hits := machine_paths((REPO / name).read_text(encoding="utf-8", errors="replace")))}
    assert not offenders, ("absolute paths of the machine a run happened on; write a path relative to the run, "
                           f"or $DATA, instead: {offenders}")


def test_requirements_txt_equals_pyproject_dependencies_and_app_extra() -> None:
    """The Space installs requirements.txt alone (before the repository is copied), so it repeats pyproject."""
    project = pyproject()["project"]
    declared = {normalized(r) for r in project["dependencies"] + project["optional-dependencies"]["app"]}
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    listed = {normalized(line) for line in lines if line and not line.startswith("-")}
    assert listed == declared, (f"only in requirements.txt: {sorted(listed - declared)}; "
                                f"only in pyproject.toml: {sorted(declared - listed)}")
    assert "torch==2.14.1" in declared


def test_console_scripts_resolve_to_callables() -> None:
    scripts = pyproject()["project"].get("scripts", {})
    for name, target in scripts.items():
        module_name, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module_name), attribute, None)), f"{name} -> {target}"


def test_package_data_ships_every_non_python_file_of_the_package() -> None:
    package_data: dict[str, list[str]] = pyproject()["tool"]["setuptools"]["package-data"]
    data_files = [name for name in repo_files() if name.startswith("brainseg/") and not name.endswith(".py")]
    assert "brainseg/splits/lgg_test_patients.txt" in data_files
    for name in data_files:
        folder, file_name = name.rsplit("/", 1)
        patterns = package_data.get(folder.replace("/", "."), []) + package_data.get("*", [])
        assert any(fnmatch.fnmatch(file_name, pattern) for pattern in patterns), (
            f"{name} would be missing from `pip install .`: add it to [tool.setuptools.package-data]")


def test_weights_go_through_git_lfs_for_the_hub() -> None:
    repo_files()  # skips outside a git checkout
    out = subprocess.run(["git", "check-attr", "filter", "diff", "merge", "text", "--",
                          "assets/models/unet/model.safetensors", "model.onnx"],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    for path in ("assets/models/unet/model.safetensors", "model.onnx"):
        for attribute, value in (("filter", "lfs"), ("diff", "lfs"), ("merge", "lfs"), ("text", "unset")):
            assert f"{path}: {attribute}: {value}" in out, out


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    commands = [line for line in (REPO / ".ci/run").read_text().splitlines()
                if line.startswith("python3 -m venv .venv &&")]
    assert len(commands) == 1, commands
    assert "requirements-test.txt" in commands[0] and "ruff check ." in commands[0] and "pytest" in commands[0]
    assert f"```bash\n{commands[0]}\n```" in (REPO / "README.md").read_text()
