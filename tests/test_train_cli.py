"""train/cli.py: the one place the train.* commands turn a user's mistake into one `error:` line and status 2."""
import pytest

from train.cli import MAX_MESSAGE_CHARS, run


def fail(exc: BaseException):
    def command() -> int:
        raise exc
    return command


def test_a_user_error_becomes_one_line_and_status_2(capsys) -> None:
    assert run(fail(FileNotFoundError("data directory /x does not exist:\n  point it at the dataset"))) == 2
    assert capsys.readouterr().err == "error: data directory /x does not exist: point it at the dataset\n"
    assert run(fail(ValueError("x" * 1000))) == 2
    line = capsys.readouterr().err.strip()
    assert len(line) == len("error: ") + MAX_MESSAGE_CHARS and line.endswith("...")


def test_success_passes_the_status_through_and_a_bug_keeps_its_traceback(capsys) -> None:
    assert run(lambda: 0) == 0 and run(lambda: 3) == 3
    with pytest.raises(KeyError):
        run(fail(KeyError("a bug")))
    assert run(fail(OSError("hub down")), errors=(OSError,)) == 2
    assert capsys.readouterr().err == "error: hub down\n"
