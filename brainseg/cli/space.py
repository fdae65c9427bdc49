"""``brainseg space export DIR [--model NAME|ORG/NAME[@REV]]``: write a push-ready Hugging Face Space repository
from this checkout (:mod:`brainseg.publishing.space`)."""
from __future__ import annotations

import argparse
import sys

from brainseg.io.hub import DEFAULT_MODEL_NAME
from brainseg.publishing.space import SpaceExportError, export_space


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="brainseg space", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a push-ready Space repository into DIR")
    export.add_argument("dir", help="a new (or empty) folder for the Space repository")
    export.add_argument("--model", default=None, help="a bundled model's name (weights in LFS) or ORG/NAME[@REV] "
                        f"on the Hub (no weights shipped); default: the app's default ({DEFAULT_MODEL_NAME})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = export_space(args.dir, args.model)
    except (SpaceExportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kb = result.total_bytes / 1024
    print(f"wrote {result.folder} (commit {result.commit[:12]}, {len(result.committed_bytes)} files, {kb:.0f} KB "
          f"committed; LFS: {', '.join(result.lfs_files) or 'none'}); model: {result.model.name}")
    print(f"push it: cd {result.folder} && git remote add space https://huggingface.co/spaces/OWNER/NAME "
          "&& git push space main")
    return 0


if __name__ == "__main__":
    sys.exit(main())
