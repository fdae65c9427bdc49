"""What every ``train.*`` command shares: a mistake the user can fix ends in one ``error:`` line, exit status 2."""
from __future__ import annotations

import sys
from collections.abc import Callable

# A missing folder, a bad value, no masks, ...: the message says what to do, a traceback would only hide it.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)
MAX_MESSAGE_CHARS = 400


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (at most ``MAX_MESSAGE_CHARS``), or its type when it has none."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def run(command: Callable[[], int], errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """``command()``'s exit status; one of ``errors`` is printed as ``error: <message>`` on stderr and gives 2.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        return command()
    except errors as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
