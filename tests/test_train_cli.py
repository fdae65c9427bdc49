"""brainseg/cli/common.py: the one place the subcommands turn a user's mistake into one `error:` line and status 2."""
import pytest

from brainseg.cli.common import MAX_MESSAGE_CHARS, run


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


@pytest.mark.parametrize("command", ["choose", "interpolate", "tune"])
def test_the_model_running_commands_take_a_device_and_refuse_one_that_is_not_here(
        command, lgg_test_dir, tmp_path, capsys, monkeypatch) -> None:
    import importlib

    import torch
    from conftest import link_standin_patients

    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, [range(14, 20), range(20, 26), range(26, 32), range(10, 16)])
    models = {"choose": ["--candidate", "unet"],
              "interpolate": ["--start", "unet", "--end", "unet-generalist", "--alpha", "0.5"],
              "tune": ["--model", "unet-generalist"]}[command]  # refused before anything is tuned or written
    out = [] if command in ("choose", "tune") else ["--out-dir", str(tmp_path / "out")]
    main = importlib.import_module(f"brainseg.cli.{command}").main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in (("cuda", "'cuda' is not available on this machine: use auto or cpu"),
                            ("gpu9", "unknown device 'gpu9': use auto, cpu, cuda or mps")):
        assert main([*models, *out, "--data-dir", str(data), "--val-fraction", "0.5", "--device", device]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
