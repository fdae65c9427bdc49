"""Train a brainseg U-Net. `brainseg train --help` lists every option.

Several processes (GPUs or machines): `torchrun --nproc_per_node=N -m brainseg train ...` (docs/distributed.md).
"""
from __future__ import annotations

import argparse
import dataclasses

from brainseg.cli.common import parse_and_run
from brainseg.training.config import CHOICES, PRESETS, TrainConfig
from brainseg.training.distributed import RankInfo
from brainseg.training.loop import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg train",
        description="Train a U-Net on the Kaggle LGG MRI set (kaggle_3m layout). Resumes automatically "
        "from OUT_DIR/checkpoint.pt; the best epoch on validation is saved to OUT_DIR/best/. Under "
        "torchrun --nproc_per_node=N the processes train together (DistributedDataParallel): --batch-size is "
        "per process, --lr is used as given (docs/distributed.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", required=True, help="the full dataset: folder with TCGA_* patient folders "
                        "(kaggle_3m layout, or its parent)")
    parser.add_argument("--out-dir", required=True, help="where checkpoints, log.csv and best/ are written")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="'article' = width 64, BCE, Adam 1e-4, 30 epochs, checkpoint every 2 epochs; "
                        "explicit flags override the preset")
    defaults = TrainConfig(data_dir="", out_dir="")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("data_dir", "out_dir"):
            continue
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {value})")
        else:
            parser.add_argument(flag, type=type(value), choices=CHOICES.get(field.name), default=None,
                                help=f"(default {value})")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = dict(PRESETS[args.preset])
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return TrainConfig(**values)


def train_command(args: argparse.Namespace) -> int:
    best = train(config_from_args(args))
    if RankInfo.from_env().is_main:
        print(f"best model: {best}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), train_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
