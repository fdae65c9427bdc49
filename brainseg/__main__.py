"""``python -m brainseg SUBCOMMAND ...``: the same as the ``brainseg`` command (and what torchrun runs with ``-m``)."""
from brainseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
