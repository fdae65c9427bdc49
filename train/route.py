"""Route each slice to one of two trained models: the home model on the slices it was built for, the away model
on every other (brainseg.routing).

    python -m train.route --home unet --away robust-ensemble --out-dir assets/models/routed

Nothing is tuned: each member keeps its own threshold (the routed threshold 0.5 maps to each), and the minimum
component size is the home model's unless ``--min-component-px`` says otherwise. Without ``--copy-weights``
the folder holds only ``config.json`` and loads its members' weights from ``--home`` and ``--away`` (bundled
names, folders or ORG/NAME@REV): no weights are duplicated. With it, ``model.safetensors`` holds both members
(a self-contained folder to publish).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from brainseg import Segmenter
from brainseg.config import ONNX_FILE, WEIGHTS_FILE
from brainseg.routing import RouteRule, route
from brainseg.weights import save_model
from train.cli import run

WEIGHT_DTYPES = {"float32": None, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.route", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="the model for whole-head three-sequence LGG-like slices "
                        "(bundled name, folder or ORG/NAME[@REV])")
    parser.add_argument("--away", required=True, help="the model for every other slice (missing sequences, a "
                        "small brain in the frame)")
    parser.add_argument("--out-dir", required=True, help="the routed model's folder (written)")
    defaults = RouteRule()
    parser.add_argument("--min-extent", type=float, default=defaults.min_extent,
                        help="slices whose tissue spans less of the frame than this go away (default %(default)s)")
    parser.add_argument("--copy-tolerance", type=float, default=defaults.copy_tolerance,
                        help="a channel this close to FLAIR counts as FLAIR copied in (default %(default)s)")
    parser.add_argument("--min-component-px", type=int, default=None,
                        help="the routed model's minimum component size (default: the home model's)")
    parser.add_argument("--copy-weights", choices=list(WEIGHT_DTYPES), default=None,
                        help="also write both members' weights into model.safetensors in this dtype")
    return parser


def make_routed(args: argparse.Namespace) -> int:
    rule = RouteRule(copy_tolerance=args.copy_tolerance, min_extent=args.min_extent)
    home, away = (Segmenter.from_pretrained(source, device="cpu", backend="torch") for source in (args.home, args.away))
    config, network = route((home.config, home.model), (away.config, away.model), rule,
                            sources=(args.home, args.away), min_component_px=args.min_component_px,
                            extra={"members_from": [home.description, away.description]})
    out_dir = Path(args.out_dir)
    if args.copy_weights:
        save_model(network, config, out_dir, WEIGHT_DTYPES[args.copy_weights])
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (WEIGHTS_FILE, ONNX_FILE):  # weights left from an earlier run would be loaded instead
            (out_dir / stale).unlink(missing_ok=True)
        config.save(out_dir)
    print(json.dumps({"out_dir": args.out_dir, "route": config.route, "threshold": config.threshold,
                      "min_component_px": config.min_component_px}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: make_routed(args))


if __name__ == "__main__":
    raise SystemExit(main())
