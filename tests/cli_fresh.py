"""``python -m brainseg NAME --help`` in a process where nothing of brainseg is imported yet (for tests/test_cli.py).

Only the standard library here: the processes this runs in are forked from a server that has imported torch and
numpy, and nothing else, so each subcommand's own imports run from scratch as in a new interpreter.
"""
from __future__ import annotations

import contextlib
import io
import runpy
import sys
import traceback


def help_of(name: str) -> tuple[int, str, str, bool]:
    """(exit status, stdout, stderr, whether brainseg was already imported) of ``python -m brainseg NAME --help``."""
    was_imported = any(module == "brainseg" or module.startswith("brainseg.") for module in sys.modules)
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["brainseg", name, "--help"]
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("brainseg", run_name="__main__", alter_sys=True)
        except SystemExit as exit_info:
            status = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported to the test as the subcommand's failure
            traceback.print_exc(file=err)
            status = 1
    return status, out.getvalue(), err.getvalue(), was_imported
