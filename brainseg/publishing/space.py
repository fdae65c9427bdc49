"""A push-ready Hugging Face Space repository, written from this checkout in one command.

    brainseg space export --out-dir DIR [--model NAME|ORG/NAME[@REV]]

``DIR`` becomes a fresh git repository with one commit of what this checkout has committed (HEAD, never work in
progress or caches): ``app.py``, the ``brainseg`` package,
``requirements.txt``, ``assets/app/``, a README with the Space front matter and card, and either

* a bundled model (the app's default, or ``--model NAME``): its folder under ``assets/models/``, its weights
  (``*.safetensors``, ``*.onnx``) stored as Git LFS pointers (git-lfs must be installed), or
* ``--model ORG/NAME[@REV]``: no weights at all; ``space_config.json`` names the Hub model, which the app downloads
  at start (a Space variable ``BRAINSEG_MODEL`` still wins over it).

No dataset file and no history of old weights go in: the Hub refuses pushes with plain blobs over 10 MB (binary:
1 MB), which this repository's own history holds, so push the export, not the repository.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from brainseg.config import CHECKOUT_ROOT, CONFIG_FILE
from brainseg.io.hub import DEFAULT_MODEL_NAME, MODEL_ENV_VAR, bundled_models, parse_repo_arg

SPACE_CONFIG_FILE = "space_config.json"
LFS_PATTERNS = ("*.safetensors", "*.onnx")
COPIED = ("app.py", "requirements.txt", "brainseg", "assets/app")  # besides the model folder
MAX_PLAIN_BYTES = 1_000_000  # the Hub refuses binary blobs over 1 MB (any over 10 MB) that are not in LFS
SHORT_DESCRIPTION_MAX = 60  # the Hub's limit
HARDWARE = "cpu-basic"  # 2 vCPU, 16 GB: enough for one U-Net on CPU (README: measured cold start and RSS)


class SpaceExportError(ValueError):
    """The export cannot be written; the message says what to do."""


@dataclass(frozen=True)
class SpaceConfig:
    """``space_config.json`` beside ``app.py``: the model a Space serves when ``BRAINSEG_MODEL`` is not set."""

    model: str | None = None

    @classmethod
    def load(cls, folder: str | Path) -> SpaceConfig:
        """The file in ``folder``; an empty config when there is none (a checkout, not an export)."""
        path = Path(folder) / SPACE_CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            model = data.get("model")
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{SPACE_CONFIG_FILE} is not a JSON object with a 'model' string ({exc})") from None
        if model is not None and not isinstance(model, str):
            raise ValueError(f"{SPACE_CONFIG_FILE}: 'model' must be a string such as ORG/NAME, not {model!r}")
        return cls(model=model or None)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SPACE_CONFIG_FILE
        path.write_text(json.dumps({"model": self.model}, indent=2) + "\n")
        return path


@dataclass(frozen=True)
class ModelChoice:
    """What the Space serves: a bundled folder (shipped, weights in LFS) or a Hub repo (nothing shipped)."""

    name: str
    folder: Path | None = None  # the bundled model's folder in this checkout
    hub_model: str | None = None  # ORG/NAME[@REV]

    @property
    def app_model(self) -> str | None:
        """What ``space_config.json`` names: None when the app's own default is what the export ships."""
        return None if self.name == DEFAULT_MODEL_NAME and self.hub_model is None else self.name


@dataclass(frozen=True)
class ExportResult:
    """The written repository: its commit, its files and their sizes as committed (LFS pointers, not weights)."""

    folder: Path
    commit: str
    model: ModelChoice
    committed_bytes: dict[str, int] = field(default_factory=dict)
    lfs_files: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(self.committed_bytes.values())


def choose_model(model: str | None) -> ModelChoice:
    """``None`` (the app's default), a bundled model's name, or ``ORG/NAME[@REV]`` on the Hub."""
    bundled = bundled_models()
    name = DEFAULT_MODEL_NAME if model is None else model.strip()
    if name in bundled:
        folder = bundled[name]
        if not (folder / CONFIG_FILE).is_file():
            raise SpaceExportError(f"the bundled model {name} has no {CONFIG_FILE} in {folder}: run from a complete "
                                   "checkout, or export with --model ORG/NAME (a model on the Hub)")
        return ModelChoice(name, folder=folder)
    if parse_repo_arg(name) is None:
        raise SpaceExportError(f"--model {name!r} is neither a bundled model ({', '.join(bundled)}) nor a Hub repo "
                               "id ORG/NAME[@REVISION]")
    return ModelChoice(name, hub_model=name)


def front_matter(choice: ModelChoice, project_readme: str) -> dict:
    """The Space's YAML front matter: the project's (title, emoji, colours, license, short description) with the
    installed Gradio as ``sdk_version``, this Python as ``python_version`` (what was tested), ``app_file: app.py``
    and the hardware it fits."""
    meta = dict(read_front_matter(project_readme))
    meta.update(sdk="gradio", sdk_version=gradio_version(meta.get("sdk_version")), app_file="app.py",
                python_version=f"{sys.version_info.major}.{sys.version_info.minor}", suggested_hardware=HARDWARE)
    meta.setdefault("license", "cc-by-nc-sa-4.0")
    meta["short_description"] = str(meta.get("short_description", "FLAIR abnormality segmentation"))[
        :SHORT_DESCRIPTION_MAX]
    if choice.hub_model:
        meta["models"] = [choice.hub_model.partition("@")[0]]
    return meta


def read_front_matter(text: str) -> dict:
    """The YAML mapping between the first two ``---`` lines of a README; empty when there is none."""
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return {}
    meta = yaml.safe_load(text[4:text.index("\n---", 4)])
    return meta if isinstance(meta, dict) else {}


def gradio_version(fallback: str | None) -> str:
    """The installed Gradio's version (what the app was tested with); the project's README's when not installed."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        if fallback:
            return str(fallback)
        raise SpaceExportError("Gradio is not installed, so the Space's sdk_version is unknown: "
                               "pip install '.[app]'") from None


def space_readme(meta: dict, choice: ModelChoice, source_commit: str) -> str:
    """The Space's README: front matter, then a short card (what it is, which model, how to call it)."""
    if choice.hub_model:
        model_line = (f"Weights: downloaded at start from the Hub model **{choice.hub_model}** (named in "
                      f"`{SPACE_CONFIG_FILE}`; a Space variable `{MODEL_ENV_VAR}` overrides it).")
    else:
        where = choice.folder.relative_to(CHECKOUT_ROOT).as_posix()
        model_line = (f"Weights: the bundled model **{choice.name}** in `{where}/` (Git LFS); its card is "
                      f"`{where}/README.md`. Set the Space variable `{MODEL_ENV_VAR}=ORG/NAME[@REV]` to serve "
                      "a model from the Hub instead.")
    body = f"""# {meta.get('title', 'brainseg')}

Segments FLAIR abnormality (lower-grade glioma) on brain-MRI slices and whole scans (NIfTI, DICOM .zip) with a
U-Net, on CPU.

> **Research demo, not a medical device.** Do not use it for diagnosis or treatment decisions, and do not upload
> identifiable patient data.

{model_line}

Programmatic use:

```python
from gradio_client import Client, handle_file
client = Client("OWNER/SPACE")
mask_png, numbers, *views = client.predict(handle_file("slice.tif"), 0.5, True, None, api_name="/segment")
mask_nii, numbers, *_ = client.predict(handle_file("flair.nii.gz"), None, None, 0.5, api_name="/segment_volume")
```

Trained on the Kaggle `mateuszbuda/lgg-mri-segmentation` data (TCGA-LGG, CC BY-NC-SA 4.0); the weights carry the
same licence. Exported by `brainseg space export` from brainseg commit `{source_commit}`.
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def copy_tree(dest: Path, choice: ModelChoice) -> None:
    """Write the app, the package and the chosen model folder as committed at HEAD into ``dest`` (same relative
    paths): a Space serves what was committed and tested, never work in progress or caches."""
    paths = [*COPIED, *([choice.folder.relative_to(CHECKOUT_ROOT).as_posix()] if choice.folder else [])]
    if shutil.which("git") is None or not (CHECKOUT_ROOT / ".git").exists():
        raise SpaceExportError("the export is written from a git checkout of brainseg: clone the repository")
    missing = [path for path in paths if not git(CHECKOUT_ROOT, "ls-tree", "HEAD", "--", path)]
    if missing:
        raise SpaceExportError(f"{', '.join(missing)} not committed in {CHECKOUT_ROOT}: the export holds what is "
                               "committed (HEAD), so commit it first")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "--", *paths], cwd=CHECKOUT_ROOT,
                             capture_output=True)
    if archive.returncode != 0:
        raise SpaceExportError(f"git archive failed: {archive.stderr.decode(errors='replace').strip()[-800:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def git(folder: Path, *args: str) -> str:
    """Run git in ``folder``; a failure is a :class:`SpaceExportError` with git's own message."""
    done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SpaceExportError(f"git {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout.strip()


def source_commit() -> str:
    """The commit the export is written from (HEAD of this checkout)."""
    return git(CHECKOUT_ROOT, "rev-parse", "--short=12", "HEAD")


def commit_repo(dest: Path, lfs: bool, message: str) -> str:
    """``git init`` in ``dest``, LFS filters and hooks local to it when weights are shipped, one commit."""
    if shutil.which("git") is None:
        raise SpaceExportError("git is not installed: install it (apt-get install git) and run the export again")
    git(dest, "init", "-q", "-b", "main")
    if lfs:
        if subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0:
            raise SpaceExportError("git-lfs is needed to store the weights as LFS pointers: install it (apt-get "
                                   "install git-lfs, brew install git-lfs), or export with --model ORG/NAME "
                                   "(weights from the Hub, none in the Space)")
        git(dest, "lfs", "install", "--local")
    git(dest, "add", "-A")
    identity = [] if git_identity(dest) else ["-c", "user.name=brainseg", "-c", "user.email=brainseg@localhost"]
    git(dest, *identity, "commit", "-q", "-m", message)
    return git(dest, "rev-parse", "HEAD")


def git_identity(folder: Path) -> bool:
    """Whether git has a user name and email configured (else the commit gets a neutral one)."""
    found = [subprocess.run(["git", "config", key], cwd=folder, capture_output=True, text=True).stdout.strip()
             for key in ("user.name", "user.email")]
    return all(found)


def committed_blobs(dest: Path, lfs: bool) -> tuple[dict[str, int], tuple[str, ...]]:
    """Sizes of the blobs in HEAD (what a push sends: pointers, not weights) and the paths stored in LFS."""
    sizes: dict[str, int] = {}
    for line in git(dest, "ls-tree", "-r", "-l", "HEAD").splitlines():
        info, path = line.split("\t", 1)
        sizes[path] = int(info.split()[3])
    pointers = tuple(git(dest, "lfs", "ls-files", "--name-only").splitlines()) if lfs else ()
    return sizes, pointers


def export_space(dest: str | Path, model: str | None = None) -> ExportResult:
    """Write the Space repository into ``dest`` (absent or empty) and commit it; see the module docstring."""
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SpaceExportError(f"{dest} exists and is not an empty folder: name a new folder for the export")
    choice = choose_model(model)
    meta = front_matter(choice, git(CHECKOUT_ROOT, "show", "HEAD:README.md"))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        copy_tree(dest, choice)
        (dest / "README.md").write_text(space_readme(meta, choice, source_commit()), encoding="utf-8")
        (dest / ".gitattributes").write_text("".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                                                     for p in LFS_PATTERNS))
        if choice.app_model:
            SpaceConfig(choice.app_model).save(dest)
        commit = commit_repo(dest, lfs=choice.folder is not None, message=f"brainseg Space ({choice.name})")
        sizes, pointers = committed_blobs(dest, lfs=choice.folder is not None)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    plain = {path: size for path, size in sizes.items() if path not in pointers and size > MAX_PLAIN_BYTES}
    if plain:
        raise SpaceExportError(f"files over {MAX_PLAIN_BYTES} bytes outside LFS in {dest}: {plain}")
    return ExportResult(dest, commit, choice, sizes, pointers)
