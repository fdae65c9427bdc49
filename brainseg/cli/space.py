"""``brainseg space export --out-dir DIR [--model NAME|ORG/NAME[@REV]]``: write a push-ready Hugging Face Space
repository from this checkout (:mod:`brainseg.publishing.space`)."""
from __future__ import annotations

import argparse
import sys

from brainseg.cli.common import parse_and_run
from brainseg.publishing.space import SpaceExportError, export_space
from brainseg.registry import DEFAULT_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg space", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a push-ready Space repository into --out-dir")
    export.add_argument("--out-dir", required=True, help="a new (or empty) folder for the Space repository")
    export.add_argument("--model", default=None, help="a bundled model's name (weights in LFS) or ORG/NAME[@REV] "
                        f"on the Hub (no weights shipped); default: the app's default ({DEFAULT_MODEL_NAME})")
    return parser


def export(args: argparse.Namespace) -> int:
    result = export_space(args.out_dir, args.model)
    kb = result.total_bytes / 1024
    print(f"wrote {result.folder} (commit {result.commit[:12]}, {len(result.committed_bytes)} files, {kb:.0f} KB "
          f"committed; LFS: {', '.join(result.lfs_files) or 'none'}); model: {result.model.name}")
    print(f"push it: cd {result.folder} && git remote add space https://huggingface.co/spaces/OWNER/NAME "
          "&& git push space main")
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), export, argv, (SpaceExportError, OSError))


if __name__ == "__main__":
    sys.exit(main())
