"""pre-receive hook of the Hub push stand-in (``tests/space_standin.py`` installs it in a bare repository).

What the Hugging Face Hub refuses on ``git push`` to a Space, as the issue states its rules:

* any new blob over 10 MB, or a binary one (a NUL byte in its first 8000 bytes, git's own test) over 1 MB, that is
  not a Git LFS pointer; a pointer whose object was not uploaded first (``lfs/objects/`` of this repository);
* on the pushed ``main``: a README.md without YAML front matter, an ``sdk`` that is not one of the Hub's, a Gradio
  Space without ``sdk_version``, an ``app_file`` (default ``app.py``) that is not in the tree, thumbnail colours
  outside the Hub's list, a ``short_description`` over 60 characters.

Prints one ``refused:`` line per problem and exits 1 (git then refuses every ref of the push).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ZERO = "0" * 40
MAX_BYTES = 10 * 1024 * 1024
MAX_BINARY_BYTES = 1024 * 1024
POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1\n"
SDKS = ("gradio", "streamlit", "docker", "static")
COLOURS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")


def git(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], input=data, capture_output=True, check=True).stdout


def new_blobs(new: str) -> list[tuple[str, int, str]]:
    """(sha, size, path) of each blob the push brings that the repository did not have."""
    listed = git("rev-list", "--objects", new, "--not", "--all").decode().splitlines()
    paths = {line.split(" ", 1)[0]: line.partition(" ")[2] for line in listed}
    query = "".join(f"{sha}\n" for sha in paths).encode()
    checked = git("cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)", data=query)
    blobs = []
    for line in checked.decode().splitlines():
        sha, kind, size = line.split()
        if kind == "blob":
            blobs.append((sha, int(size), paths[sha]))
    return blobs


def blob_problem(sha: str, size: int, path: str) -> str | None:
    """Why the Hub would refuse this blob, or None."""
    if size < 1024:
        data = git("cat-file", "blob", sha)
        if data.startswith(POINTER_PREFIX):
            oid = next((line[11:] for line in data.decode().splitlines() if line.startswith("oid sha256:")), "")
            stored = Path(os.environ.get("GIT_DIR", ".")) / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            return None if oid and stored.is_file() else f"{path}: LFS pointer to {oid[:12]} but the object was " \
                                                          "not uploaded (push with git-lfs installed)"
        return None
    if size > MAX_BYTES:
        return f"{path} ({size} bytes) is over 10 MB and not in LFS: track it with git lfs (or Xet)"
    if size > MAX_BINARY_BYTES and b"\0" in git("cat-file", "blob", sha)[:8000]:
        return f"{path} ({size} bytes) is a binary file over 1 MB and not in LFS: track it with git lfs (or Xet)"
    return None


def front_matter_problems(commit: str) -> list[str]:
    """What the Hub's Space config checks would refuse in ``commit``'s README.md."""
    files = set(git("ls-tree", "-r", "--name-only", commit).decode().splitlines())
    if "README.md" not in files:
        return ["README.md is missing: a Space needs its YAML front matter there"]
    text = git("show", f"{commit}:README.md").decode("utf-8", errors="replace")
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return ["README.md has no YAML front matter (--- ... ---)"]
    try:
        meta = yaml.safe_load(text[4:text.index("\n---", 4)])
    except yaml.YAMLError as exc:
        return [f"README.md front matter is not valid YAML: {exc}"]
    if not isinstance(meta, dict):
        return ["README.md front matter is not a mapping"]
    problems = []
    if meta.get("sdk") not in SDKS:
        problems.append(f"sdk must be one of {', '.join(SDKS)}, not {meta.get('sdk')!r}")
    if meta.get("sdk") == "gradio" and not meta.get("sdk_version"):
        problems.append("a Gradio Space needs sdk_version")
    app_file = meta.get("app_file", "app.py")
    if meta.get("sdk") in ("gradio", "streamlit") and app_file not in files:
        problems.append(f"app_file {app_file} is not in the repository")
    problems += [f"{key} must be one of {', '.join(COLOURS)}" for key in ("colorFrom", "colorTo")
                 if key in meta and meta[key] not in COLOURS]
    if len(str(meta.get("short_description", ""))) > 60:
        problems.append("short_description is longer than 60 characters")
    return problems


def main() -> int:
    problems = []
    for line in sys.stdin.read().splitlines():
        _, new, ref = line.split()
        if new == ZERO:
            continue
        problems += [p for blob in new_blobs(new) if (p := blob_problem(*blob))]
        if ref == "refs/heads/main":
            problems += front_matter_problems(new)
    for problem in problems:
        print(f"refused: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
