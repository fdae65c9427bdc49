"""The one ``brainseg`` command (issue 30): its subcommand list, and the same flag names in every subcommand
(docs/cli.md)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from brainseg.cli import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
# the subcommands that load and run a model: each takes --device
RUNS_A_MODEL = {"predict", "calibrate", "train", "tune", "choose", "evaluate", "ablate", "interpolate", "publish"}
# the subcommands that score held-out patient folders: --test-dir, never --data-dir, names them
SCORES_HELD_OUT = {"evaluate", "publish"}
OLD_SPELLINGS = {"--out", "--bf16", "--amp", "--no-amp", "--seed-split", "--output"}


def cli_subcommands() -> list[str]:
    """The subcommands whose module is in this package (``app`` lives with the app, which may be elsewhere)."""
    return [name for name in SUBCOMMANDS if SUBCOMMANDS[name].module.startswith("brainseg.cli.")]


def parser_of(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(SUBCOMMANDS[name].module).build_parser()


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--flag`` of ``parser`` and of its sub-parsers (``space export``, ``intensity fit``)."""
    return {option for action in all_actions(parser) for option in action.option_strings if option.startswith("--")}


def all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions of ``parser`` and of its sub-parsers."""
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            actions += [a for sub in action.choices.values() for a in all_actions(sub)]
    return actions


def test_help_lists_every_subcommand(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: brainseg SUBCOMMAND")
    for name, sub in SUBCOMMANDS.items():
        assert f"  {name}" in out and sub.summary in out, name


def test_an_unknown_subcommand_exits_2_with_the_list(capsys) -> None:
    assert main(["segment"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown subcommand 'segment'") and all(name in err for name in SUBCOMMANDS)
    assert main([]) == 2, "no subcommand at all is a usage error too"


def test_python_m_brainseg_help_and_unknown_subcommand() -> None:
    ok = subprocess.run([sys.executable, "-m", "brainseg", "--help"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0 and "models" in ok.stdout and "forms-table" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "brainseg", "nope"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "unknown subcommand 'nope'" in bad.stderr and "predict" in bad.stderr


@pytest.mark.parametrize("name", cli_subcommands())
def test_every_subcommand_uses_the_shared_flag_names(name: str) -> None:
    options = option_strings(parser_of(name))
    assert not options & OLD_SPELLINGS, f"brainseg {name} still spells {options & OLD_SPELLINGS}"
    assert ("--device" in options) == (name in RUNS_A_MODEL), name
    if name in SCORES_HELD_OUT:
        assert "--test-dir" in options, name
    for action in all_actions(parser_of(name)):
        if "--data-dir" in action.option_strings:  # the full dataset; held-out folders go to --test-dir
            assert "kaggle_3m" in action.help and "held-out" not in action.help, (name, action.help)
    if "--seed" in options:
        assert "--split-seed" in options, f"brainseg {name}: --seed is init/sampling, --split-seed the patients"
    if "--precision" in options:
        precision = next(a for a in all_actions(parser_of(name)) if "--precision" in a.option_strings)
        assert tuple(precision.choices) == ("fp32", "bf16"), name


def test_the_seeds_are_two_numbers_wherever_a_run_samples() -> None:
    ablate = parser_of("ablate").parse_args(["--study", "depth", "--data-dir", "d", "--out-dir", "o", "--seed", "7"])
    assert (ablate.seed, ablate.split_seed) == (7, 2026), "--seed no longer moves the validation patients"
    tune = parser_of("tune").parse_args(["--model", "m", "--data-dir", "d", "--split-seed", "5"])
    assert tune.split_seed == 5
    with pytest.raises(SystemExit):
        parser_of("tune").parse_args(["--model", "m", "--data-dir", "d", "--seed", "5"])  # the old alias is gone


def test_held_out_folders_and_the_full_dataset_are_told_apart() -> None:
    evaluate = parser_of("evaluate")
    assert evaluate.parse_args(["--test-dir", "lgg-test"]).test_dir == "lgg-test"
    assert evaluate.parse_args(["--data-dir", "kaggle_3m", "--split", "val"]).split == "val"
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--data-dir", "kaggle_3m", "--split", "all"])  # every patient: that is --test-dir
    publish = parser_of("publish").parse_args(["--repo-id", "o/n", "--test-dir", "lgg-test", "--device", "cpu"])
    assert (publish.test_dir, publish.data_dir, publish.device) == ("lgg-test", None, "cpu")


@pytest.mark.parametrize("name", cli_subcommands())
def test_every_subcommand_help_exits_0_in_process(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: brainseg {name}")


@pytest.mark.slow  # one fresh process per subcommand
def test_every_subcommand_help_works_through_python_m_brainseg() -> None:
    """``python -m brainseg NAME --help`` with nothing of brainseg imported before (so a subcommand that only works
    after another one's imports fails here): each in its own process, forked from a server that has imported only
    torch and numpy (a new interpreter per subcommand spent ~30 s importing torch 14 times)."""
    from cli_fresh import help_of

    names = [name for name in SUBCOMMANDS if importlib.util.find_spec(SUBCOMMANDS[name].module) is not None]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "numpy"])
    with ProcessPoolExecutor(max_workers=2, mp_context=context, max_tasks_per_child=1) as pool:
        for name, (status, out, err, was_imported) in zip(names, pool.map(help_of, names)):
            assert not was_imported, "the forked process had brainseg imported already"
            assert status == 0, (name, err[-2000:])
            assert f"usage: brainseg {name}" in out and "--help" in out, name
