"""Turning a model argument (None, a bundled model's name, a folder, or ``ORG/NAME[@REVISION]``) into a folder of
model files.

This module only finds files (:class:`ResolvedModel`); :mod:`brainseg.inference.segmenter` builds models from them.

Hub models are fetched with :func:`huggingface_hub.hf_hub_download` into the normal Hugging Face
cache (``HF_HOME`` / ``HF_HUB_CACHE``), so ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``
work as everywhere else. The commit the files came from is pinned and reported.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from brainseg.config import CONFIG_FILE, ONNX_FILE, PACKAGE_DIR, WEIGHTS_FILE
from brainseg.registry import DEFAULT_MODEL_NAME, bundled_names

BUNDLED_LABEL = "bundled default"
MODEL_ENV_VAR = "BRAINSEG_MODEL"
REPO_ARG = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def find_bundled_root(package_dir: Path = PACKAGE_DIR) -> Path:
    """The folder holding the bundled models (one sub-folder per name): ``brainseg/_bundled`` in an installed
    wheel (``pyproject.toml`` maps it onto ``assets/models``), else the checkout's ``assets/models``."""
    installed = package_dir / "_bundled"
    return installed if installed.is_dir() else package_dir.parent / "assets" / "models"


BUNDLED_MODELS_DIR = find_bundled_root()
BUNDLED_MODEL_DIR = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME  # the default model's folder


class ModelLoadError(ValueError):
    """A model could not be found, downloaded or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on disk and where it came from; ``name`` is what the model is called: its bundled name
    (:mod:`brainseg.registry`), its folder's name, or its Hub repo id."""

    folder: Path
    source: str
    name: str
    repo_id: str | None = None
    revision: str | None = None
    requested_revision: str | None = None

    def describe(self) -> str:
        """One line for a UI: the repo, what was asked for and the commit it resolved to."""
        if self.repo_id is None:
            return self.source
        asked = self.requested_revision or "main"
        commit = self.revision[:12] if self.revision else "unknown commit"
        return f"{self.repo_id} @ {asked} (commit {commit})"


def parse_repo_arg(model_arg: str) -> tuple[str, str | None] | None:
    """``"ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")``; None when it is not a repo id."""
    match = REPO_ARG.match(model_arg.strip())
    if match is None:
        return None
    return match["repo"], match["rev"]


def model_arg_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``BRAINSEG_MODEL`` value, or None when unset or blank."""
    value = (os.environ if environ is None else environ).get(MODEL_ENV_VAR, "").strip()
    return value or None


def bundled_models() -> dict[str, Path]:
    """The bundled models of :mod:`brainseg.registry` by name, the default (:data:`DEFAULT_MODEL_NAME`) first,
    each with its folder (which holds no files where a Space export left it out)."""
    return {name: BUNDLED_MODELS_DIR / name for name in bundled_names()}


def _bundled(name: str, folder: Path) -> ResolvedModel:
    """A bundled model's folder; it must hold the model's files (a checkout or an installed wheel has them)."""
    if not (folder / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"the bundled model {name} is not here ({folder}): install brainseg from a complete checkout or its "
            "wheel, or pass a model folder or ORG/NAME"
        )
    return ResolvedModel(folder, BUNDLED_LABEL if name == DEFAULT_MODEL_NAME else f"bundled {name}", name)


def resolve_model(model_arg: str | Path | None, *, cache_dir: str | Path | None = None,
                  token: str | bool | None = None) -> ResolvedModel:
    """Find the folder holding ``config.json`` + ``model.safetensors`` for ``model_arg``.

    ``None`` (or ``"bundled"``) is the bundled default model, an existing folder is used as is, a name from
    :func:`bundled_models` (``"unet"``, ...) is that bundled model, and ``ORG/NAME[@REVISION]`` is downloaded
    from the Hub (or taken from the cache when offline). A folder wins over a bundled name it shadows (as
    for ``"bundled"``): pass ``./NAME`` or ``NAME`` to mean the folder, and run from elsewhere to mean the name.
    """
    text = "" if model_arg is None else str(model_arg).strip()
    if not text or (text == "bundled" and not Path(text).exists()):
        return _bundled(DEFAULT_MODEL_NAME, BUNDLED_MODEL_DIR)
    path = Path(model_arg).expanduser()
    if path.is_dir():
        return ResolvedModel(path, str(model_arg), path.resolve().name)
    bundled = bundled_models()
    if not isinstance(model_arg, Path) and text in bundled:
        return _bundled(text, bundled[text])
    if path.exists():
        raise ModelLoadError(f"{model_arg} is a file: pass the folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    parsed = None if isinstance(model_arg, Path) else parse_repo_arg(text)
    if parsed is None:
        raise ModelLoadError(
            f"{text} is neither an existing model folder nor a Hub repo id (ORG/NAME or ORG/NAME@REVISION), nor "
            f"the name of a bundled model ({', '.join(bundled)})"
        )
    return download_model(parsed[0], parsed[1], cache_dir=cache_dir, token=token)


def download_model(repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None,
                   token: str | bool | None = None) -> ResolvedModel:
    """Fetch config and weights of one commit of ``repo_id`` into the Hub cache, and its exported ONNX graph when
    the repository has one (``brainseg publish`` pushes it: the CPU backend then needs no export at first load)."""
    label = f"{repo_id}@{revision}" if revision else repo_id
    options = {"cache_dir": cache_dir, "token": token, "library_name": "brainseg"}
    _refuse_at_once_when_unreachable(repo_id, CONFIG_FILE, revision, label, options)
    config_path = _download(repo_id, CONFIG_FILE, revision, label, options)
    commit = config_path.parent.name if COMMIT.match(config_path.parent.name) else None
    pinned = commit or revision
    if not _matches_etag(config_path):
        config_path = _redownload_damaged(repo_id, CONFIG_FILE, pinned, label, options)
    weights_path = _download(repo_id, WEIGHTS_FILE, pinned, label, options)
    if not _matches_etag(weights_path):
        weights_path = _redownload_damaged(repo_id, WEIGHTS_FILE, pinned, label, options)
    if weights_path.parent != config_path.parent:
        raise ModelLoadError(f"{label}: {CONFIG_FILE} and {WEIGHTS_FILE} came from different commits, try again")
    _download_optional(repo_id, ONNX_FILE, pinned, options)
    return ResolvedModel(config_path.parent, f"{repo_id}@{commit}" if commit else label, repo_id, repo_id, commit,
                         revision)


def _download(repo_id: str, filename: str, revision: str | None, label: str, options: dict,
              force: bool = False) -> Path:
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, force_download=force, **options))
    except Exception as exc:  # every client failure becomes one clear message
        raise ModelLoadError(explain_download_error(exc, repo_id, label, filename)) from exc


def _refuse_at_once_when_unreachable(repo_id: str, filename: str, revision: str | None, label: str,
                                     options: dict) -> None:
    """Fail with the usual message when ``filename`` is not cached and nothing answers at the Hub's address
    (connection refused, no route, unknown host): :func:`hf_hub_download` would retry for ~23 s and then fail the
    same way. Any other outcome (an answer, an error status, a timeout) goes on to the download and its retries."""
    if hf_constants.HF_HUB_OFFLINE:
        return
    if try_to_load_from_cache(repo_id, filename, cache_dir=options["cache_dir"], revision=revision) is not None:
        return
    try:
        _ask_once(repo_id, filename, revision, options)
    except Exception as exc:  # noqa: BLE001 - only "cannot connect" is decided here
        if _cannot_connect(exc):
            raise ModelLoadError(explain_download_error(LocalEntryNotFoundError(str(exc)), repo_id, label,
                                                        filename)) from exc


def _ask_once(repo_id: str, filename: str, revision: str | None, options: dict) -> None:
    """One HEAD request for ``filename``, without the client's retries; raises what the client raises."""
    get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), token=options["token"],
                         library_name=options["library_name"])


def _cannot_connect(exc: BaseException) -> bool:
    """Whether ``exc`` (from the Hub client's HTTP library, whichever it is) means no connection could be made."""
    return any(cls.__name__ in ("ConnectError", "ConnectionError") for cls in type(exc).__mro__)


def _download_optional(repo_id: str, filename: str, revision: str | None, options: dict) -> Path | None:
    """A file the model does not need (absent from older repositories, not cached when offline): None when it
    cannot be had. A graph that does not match the weights is ignored later
    (``brainseg.inference.backends.ensure_onnx``).

    A file not in the cache is first asked for with one HEAD request without retries: :func:`hf_hub_download`
    retries an unreachable Hub for ~23 s before giving up, which a model taken from the cache must not wait for.
    """
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=options["cache_dir"], revision=revision)
    if cached is not None and not isinstance(cached, str):
        return None  # the cache records that this commit has no such file
    if cached is None:
        if hf_constants.HF_HUB_OFFLINE:
            return None
        try:
            _ask_once(repo_id, filename, revision, options)
            cached = hf_hub_download(repo_id, filename, revision=revision, **options)
        except Exception:  # noqa: BLE001 - missing, unreachable: the backend exports the graph itself
            return None
    path = Path(cached)
    return path if _matches_etag(path) else None


def _redownload_damaged(repo_id: str, filename: str, revision: str | None, label: str, options: dict) -> Path:
    """Download a file again whose cached copy does not match the Hub's checksum; fail if it still differs."""
    if hf_constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"the cached {filename} of {label} is damaged (checksum mismatch) and HF_HUB_OFFLINE is set: "
            f"unset it to download the file again, or delete the repo folder from {hf_constants.HF_HUB_CACHE}"
        )
    path = _download(repo_id, filename, revision, label, options, force=True)
    if not _matches_etag(path):
        raise ModelLoadError(f"{filename} downloaded from {label} does not match the Hub's checksum: corrupted "
                             "transfer or repository, try again later")
    return path


def _matches_etag(path: Path) -> bool:
    """Check a cached file against the blob name the cache gives it (sha256 for LFS, git sha1 otherwise)."""
    etag = path.resolve().name
    if SHA256.match(etag):
        digest = hashlib.sha256()
    elif COMMIT.match(etag):
        digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        return True  # no symlinked blob (e.g. Windows without symlinks): nothing to compare
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == etag


def explain_download_error(exc: Exception, repo_id: str, label: str, filename: str) -> str:
    """A one-paragraph, human explanation of a failed Hub download."""
    endpoint = hf_constants.ENDPOINT
    if isinstance(exc, GatedRepoError):
        return (f"{repo_id} is gated on the Hub: accept its conditions on {endpoint}/{repo_id} and log in "
                "(hf auth login)")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"model repo {repo_id} was not found on the Hub ({endpoint}) and there is no local folder of that "
                "name: check the name; for a private repo log in with `hf auth login` or set HF_TOKEN")
    if isinstance(exc, RevisionNotFoundError):
        return (f"revision {label.partition('@')[2]!r} does not exist in {repo_id}: use an existing branch, tag "
                "or commit")
    if isinstance(exc, LocalEntryNotFoundError):
        if hf_constants.HF_HUB_OFFLINE:
            return (f"HF_HUB_OFFLINE is set and {label} is not in the local Hub cache ({hf_constants.HF_HUB_CACHE}): "
                    "download it once while online, or unset HF_HUB_OFFLINE")
        return (f"cannot reach the Hub ({endpoint}) and {label} is not in the local cache "
                f"({hf_constants.HF_HUB_CACHE}): check the network connection")
    if isinstance(exc, EntryNotFoundError):
        return f"{label} has no {filename}: it is not a brainseg model repo (expected {CONFIG_FILE} + {WEIGHTS_FILE})"
    if isinstance(exc, HFValidationError):
        return f"{label} is not a valid Hub repo id or revision ({first_line(exc)})"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "an error"
        return f"the Hub ({endpoint}) answered {status} for {filename} of {label}: {first_line(exc)}"
    return f"downloading {filename} of {label} failed ({type(exc).__name__}: {first_line(exc)}): try again"


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
