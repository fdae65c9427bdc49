"""Issue 34: ``brainseg space export`` writes a Space repository the Hub accepts (checked by a local push
stand-in that refuses what the Hub refuses), this repository's own history is refused by it, and the export starts
as a Space does (fresh venv, ``requirements.txt`` only) and answers ``/segment`` and ``/segment_volume``."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from space_standin import PushStandin, cold_start, git_lfs_available, space_venv, write_test_scan

from brainseg.cli.space import main
from brainseg.io.hub import DEFAULT_MODEL_NAME, bundled_models
from brainseg.publishing.space import (
    SPACE_CONFIG_FILE,
    SpaceConfig,
    SpaceExportError,
    export_space,
    read_front_matter,
)

REPO = Path(__file__).resolve().parents[1]
HUB_MODEL = "brainseg-test/space-model@v1"
DATASET_SUFFIXES = (".tif", ".tiff", ".nii", ".gz", ".dcm", ".npy", ".npz", ".png", ".jpg", ".zip")
COLD_PATIENT = "TCGA_HT_8114_19981030"  # 22 slices, a large tumor
needs_lfs = pytest.mark.skipif(not git_lfs_available(), reason="git-lfs is not installed (apt-get install git-lfs)")


def default_model_folder() -> Path:
    """The app's default model's folder (whatever the default is today); skip while it is not bundled yet."""
    folder = bundled_models()[DEFAULT_MODEL_NAME]
    if not (folder / "config.json").is_file():
        pytest.skip(f"the default model {DEFAULT_MODEL_NAME} is not in assets/ yet")
    return folder


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout


def test_export_with_a_hub_model_ships_no_weights_and_pushes(tmp_path: Path) -> None:
    result = export_space(tmp_path / "space", HUB_MODEL)
    space = result.folder
    files = git(space, "ls-files").splitlines()
    assert {"app.py", "requirements.txt", "README.md", ".gitattributes", SPACE_CONFIG_FILE,
            "assets/app/threshold.js", "brainseg/__init__.py", "brainseg/splits/lgg_test_patients.txt"} <= set(files)
    app_modules = {f"brainseg/app/{path.name}" for path in (REPO / "brainseg" / "app").glob("*.py")}
    assert {"brainseg/app/launch.py", "brainseg/app/slice_tab.py"} <= app_modules <= set(files), "app.py's package"
    assert not [f for f in files if f.endswith((".safetensors", ".onnx"))], "a Hub export ships no weights"
    assert not [f for f in files if f.lower().endswith(DATASET_SUFFIXES)], "no dataset file in a Space"
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert git(space, "rev-list", "--count", "HEAD").strip() == "1" and result.commit == git(space, "rev-parse",
                                                                                               "HEAD").strip()
    for name in ("requirements.txt", "app.py", "brainseg/publishing/space.py"):
        assert (space / name).read_text() == git(REPO, "show", f"HEAD:{name}"), "the export holds what is committed"
    assert SpaceConfig.load(space).model == HUB_MODEL
    assert result.total_bytes <= 30 * 2**20 and max(result.committed_bytes.values()) < 2**20

    import gradio

    meta = read_front_matter((space / "README.md").read_text())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["license"] and 0 < len(meta["short_description"]) <= 60 and meta["models"] == [HUB_MODEL[:-3]]

    standin = PushStandin.create(tmp_path / "hub.git")
    pushed = standin.push(space)
    assert pushed.returncode == 0, pushed.stderr
    assert f"{result.commit} refs/heads/main" in standin.refs()


@needs_lfs
def test_export_of_the_default_stores_its_weights_in_lfs_and_pushes(tmp_path: Path) -> None:
    folder = default_model_folder()
    result = export_space(tmp_path / "space")
    space, relative = result.folder, folder.relative_to(REPO).as_posix()
    weights = f"{relative}/model.safetensors"
    assert weights in result.lfs_files and not (space / SPACE_CONFIG_FILE).exists(), "the app's default needs no name"
    assert set(result.lfs_files) == {f for f in result.committed_bytes if f.endswith((".safetensors", ".onnx"))}
    assert all(size < 2**20 for size in result.committed_bytes.values()), result.committed_bytes
    pointer = git(space, "cat-file", "-p", f"HEAD:{weights}")
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert f"oid sha256:{digest}" in pointer
    assert (space / weights).read_bytes() == (folder / "model.safetensors").read_bytes(), "work tree keeps weights"
    shipped = {p.relative_to(space).as_posix() for p in (space / relative).iterdir()}
    assert shipped == set(git(REPO, "ls-files", "--", relative).splitlines())

    standin = PushStandin.create(tmp_path / "hub.git")
    pushed = standin.push(space)
    assert pushed.returncode == 0, pushed.stderr
    assert (standin.path / "lfs" / "objects" / digest[:2] / digest[2:4] / digest).is_file(), "LFS object uploaded"


def test_export_refuses_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", "--out-dir", str(tmp_path / "full"), "--model", HUB_MODEL]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["export", "--out-dir", str(tmp_path / "new"), "--model", "no such model"]) == 2
    err = capsys.readouterr().err
    assert "neither a bundled model" in err and "ORG/NAME" in err and not (tmp_path / "new").exists()
    (tmp_path / SPACE_CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="space_config.json"):
        SpaceConfig.load(tmp_path)
    with pytest.raises(SpaceExportError):
        export_space(tmp_path / "full")


def test_app_takes_the_model_from_args_then_env_then_space_config(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from brainseg.app.launch import started_model_arg

    monkeypatch.delenv("BRAINSEG_MODEL", raising=False)
    assert started_model_arg(None, tmp_path) is None, "a checkout: the bundled default"
    SpaceConfig("org/from-file").save(tmp_path)
    assert started_model_arg(None, tmp_path) == "org/from-file"
    assert started_model_arg("unet", tmp_path) == "unet"
    monkeypatch.setenv("BRAINSEG_MODEL", "org/from-variable")
    assert started_model_arg(None, tmp_path) is None, "load_segmenter reads the Space variable itself"


def commit_files(repo: Path, files: dict[str, bytes]) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "m")


GOOD_README = (b"---\ntitle: t\nsdk: gradio\nsdk_version: 6.31.0\napp_file: app.py\nlicense: mit\n"
               b"short_description: a test\n---\n")
POINTER = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 12345678\n")


@pytest.mark.parametrize(("files", "refusal"), [
    ({}, None),
    ({"notes.txt": b"line of text\n" * 160_000}, None),  # 2 MB of text: under 10 MB, not binary
    ({"big.txt": b"line of text\n" * 900_000}, "big.txt (11700000 bytes) is over 10 MB and not in LFS"),
    ({"w.bin": bytes(range(256)) * 8_000}, "w.bin (2048000 bytes) is a binary file over 1 MB"),
    ({"w.safetensors": POINTER}, "LFS pointer to abababababab but the object was not uploaded"),
    ({"README.md": GOOD_README.replace(b"app_file: app.py", b"app_file: main.py")}, "app_file main.py is not"),
    ({"README.md": GOOD_README.replace(b"sdk_version: 6.31.0\n", b"")}, "a Gradio Space needs sdk_version"),
    ({"README.md": GOOD_README.replace(b"a test", b"x" * 61)}, "short_description is longer than 60"),
    ({"README.md": b"# no front matter\n"}, "README.md has no YAML front matter"),
])
def test_the_push_standin_refuses_what_the_hub_refuses(tmp_path: Path, files: dict, refusal: str | None) -> None:
    repo = tmp_path / "repo"
    commit_files(repo, {"README.md": GOOD_README, "app.py": b"print('hi')\n", **files})
    pushed = PushStandin.create(tmp_path / "hub.git").push(repo)
    if refusal is None:
        assert pushed.returncode == 0, pushed.stderr
    else:
        assert pushed.returncode != 0 and refusal in pushed.stderr, pushed.stderr


@pytest.mark.slow
def test_this_repositorys_history_is_refused(tmp_path: Path) -> None:
    """The README's advice (push the export, not the repository) is true: the weights in history are plain blobs."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone.git"
    subprocess.run(["git", "clone", "-q", "--bare", "--no-local", str(REPO), str(clone)], check=True, timeout=600)
    pushed = PushStandin.create(tmp_path / "hub.git").push(clone, "HEAD:refs/heads/main")
    assert pushed.returncode != 0
    refused = [line for line in pushed.stderr.splitlines() if "refused:" in line]
    assert any("model.safetensors" in line and "not in LFS" in line for line in refused), pushed.stderr


@pytest.fixture(scope="module")
def space_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding requirements.txt and nothing else, as a Space builds it. It is kept between runs on a machine
    (``BRAINSEG_SPACE_VENV``, default ``~/.cache/brainseg/space-venv``) and brought up to requirements.txt each
    time, as a Space rebuild does: the first build installs everything (28 min here, where PyTorch's CPU index is
    unreachable and pip fetches the CUDA build), later ones only what changed."""
    folder = Path(os.environ.get("BRAINSEG_SPACE_VENV") or Path.home() / ".cache" / "brainseg" / "space-venv")
    python, seconds = space_venv(folder, REPO / "requirements.txt")
    print(f"pip install -r requirements.txt: {seconds:.0f} s")
    return python


@pytest.mark.slow
@pytest.mark.e2e
@needs_lfs
@pytest.mark.parametrize("source", ["bundled", "hub"])
def test_the_export_starts_as_a_space_and_answers(source: str, space_python: Path, lgg_test_dir: Path,
                                                  tmp_path: Path) -> None:
    from demo_server import free_port
    from hub_standin import FakeHub

    folder = default_model_folder()
    slice_path, flair = write_test_scan(lgg_test_dir, COLD_PATIENT, tmp_path / "scan")
    env = {"HF_HOME": str(tmp_path / "hf"), "BRAINSEG_CACHE": str(tmp_path / "cache")}  # cold: nothing cached
    hub = None
    if source == "hub":
        hub = FakeHub().start()
        hub.add_folder(HUB_MODEL.split("@")[0], folder)
        hub.tag(HUB_MODEL.split("@")[0], "v1", hub.repos[HUB_MODEL.split("@")[0]].refs["main"])
        env["HF_ENDPOINT"] = hub.endpoint
    try:
        space = export_space(tmp_path / "space", HUB_MODEL if hub else None).folder
        measured = cold_start(space, space_python, slice_path, flair, free_port(), tmp_path / "app.log", env)
    finally:
        if hub is not None:
            hub.stop()
    print(json.dumps({source: measured.as_dict()}))
    if hub is not None:
        assert any("/resolve/" in path and "model.safetensors" in path for _, path in hub.requests)
    assert measured.slice_area_px > 500 and measured.volume_ml > 1, "the tumor slice and scan are found"
    assert measured.first_segment_s <= 60, f"cold start to the first /segment answer: {measured.first_segment_s:.1f} s"
    assert measured.rss_mb_after_volume <= 3 * 1024
