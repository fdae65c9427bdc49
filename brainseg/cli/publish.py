"""Publish a model to a Hugging Face Hub model repo: evaluate -> model card -> push (or --dry-run DIR)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from brainseg.cli.common import add_device_argument, add_test_dir_argument, parse_and_run
from brainseg.config import CONFIG_FILE, UNET, WEIGHTS_FILE, ModelConfig
from brainseg.evaluation.external import DEFAULT_TRUTH_GLOBS, evaluate_external
from brainseg.evaluation.forms import REPORT_FORMS
from brainseg.evaluation.scoring import evaluate_model
from brainseg.inference.backends import (
    AUTO_TOLERANCE,
    ONNX_FILE,
    OnnxRunner,
    max_probability_difference,
    save_onnx,
    synthetic_probe,
)
from brainseg.inference.segmenter import Segmenter, load_model
from brainseg.io.dataset import bundled_test_patients
from brainseg.io.hub import ModelLoadError, ResolvedModel, parse_repo_arg, resolve_model
from brainseg.models.unet import count_parameters
from brainseg.publishing.card import build_card
from brainseg.publishing.facts import check_evaluation, find_training_dir, metrics_summary, read_training_info

CARD_FILE = "README.md"
EVAL_FILE = "evaluation.json"
PUBLISHED_FILES = (WEIGHTS_FILE, ONNX_FILE, CONFIG_FILE, CARD_FILE, EVAL_FILE)


DESCRIPTION = ("Evaluate a brainseg model on the held-out patients, write its model card and push model.safetensors + "
               "model.onnx (the same weights as an ONNX graph) + config.json + README.md + evaluation.json to a Hub "
               "model repo. The token comes from `hf auth login` or HF_TOKEN; HF_ENDPOINT selects another Hub.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainseg publish", description=DESCRIPTION)
    parser.add_argument("--repo-id", required=True, help="target model repo, ORG/NAME (created if missing)")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id[@revision]; default: bundled")
    source = parser.add_mutually_exclusive_group()
    add_test_dir_argument(source)
    source.add_argument("--data-dir", help="the full dataset (kaggle_3m layout): its test split is scored")
    source.add_argument("--eval-json", help="use this `brainseg evaluate --json` output instead")
    parser.add_argument("--forms", action="store_true",
                        help="also score those slices in every input form (skull-stripped, FLAIR only, FLAIR + "
                        "T1c, half frame, ...; brainseg.evaluation.forms) and put the table in the card (needs "
                        "--test-dir or --data-dir; an --eval-json written by `brainseg evaluate --forms` brings its "
                        "own)")
    parser.add_argument("--external", metavar="DIR",
                        help="also measure 3D whole-tumor Dice on the labelled NIfTI subject folders under DIR "
                        "(all channels and FLAIR only) and put the table in the card; never used for choosing")
    parser.add_argument("--external-truth-glob", metavar="GLOB",
                        help="the label file in each --external subject folder (default: the first of "
                        f"{', '.join(DEFAULT_TRUTH_GLOBS)} that matches one file in every folder)")
    parser.add_argument("--dry-run", metavar="DIR", help="write the folder that would be pushed into DIR, push nothing")
    parser.add_argument("--train-dir", help="run folder with train_config.json / log.csv (default: the model "
                        "folder or its parent)")
    parser.add_argument("--train-hardware", help="hardware the model was trained on, for the card")
    parser.add_argument("--train-command", help="training command for the card (default: rebuilt from "
                        "train_config.json)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--commit-message", default="Publish brainseg model", help="commit message on the Hub")
    add_device_argument(parser)
    return parser


def check_output_dir(folder: Path) -> None:
    """A dry-run folder must be new, empty, or hold only files a previous dry run wrote."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--dry-run {folder} is a file, not a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in PUBLISHED_FILES)
        if foreign:
            raise ValueError(f"--dry-run folder {folder} already holds other files ({', '.join(foreign[:3])}): "
                             "use a new or empty folder")


def run_evaluation(args: argparse.Namespace, segmenter: Segmenter) -> dict[str, Any]:
    """Metrics of ``segmenter`` on the held-out patients (what ``brainseg evaluate --json`` writes): every patient of
    ``--test-dir``, or the test split of ``--data-dir``; with ``--forms`` also in every input form."""
    folder, split = (args.test_dir, "all") if args.test_dir else (args.data_dir, "test")
    return evaluate_model(segmenter, folder, split, forms=REPORT_FORMS if args.forms else ())


def print_subject(row: dict[str, Any]) -> None:
    dice = ", ".join(f"{form} {value:.3f}" for form, value in row["dice"].items())
    print(f"external {row['name']}: Dice {dice}", file=sys.stderr, flush=True)


def check_held_out(evaluation: dict[str, Any]) -> None:
    """The card promises metrics on held-out patients (also in every input form): refuse anything else."""
    patients = set(evaluation["per_patient_dice"])
    for report in (evaluation.get("forms") or {}).values():
        patients |= set(report["per_patient_dice"])
    leaked = sorted(patients - set(bundled_test_patients()))
    if leaked:
        raise ValueError(f"the evaluation includes {len(leaked)} patients outside the held-out test split "
                         f"(e.g. {leaked[0]}): evaluate on the held-out patients only (--test-dir of held-out "
                         "patient folders, or --data-dir: its test split)")


def published_config(config: ModelConfig, evaluation: dict[str, Any], training: dict[str, Any]) -> ModelConfig:
    """``config.json`` for the Hub: the model's config plus data, split, training facts and held-out metrics."""
    extra = dict(config.extra)
    extra.update(
        architecture="unet (bilinear upsampling)" if config.arch == UNET else config.architecture(),
        data={"dataset": "Kaggle lgg-mri-segmentation (kaggle_3m), from TCIA TCGA-LGG",
              "licence": "CC BY-NC-SA 4.0", "split": training.get("split", "not recorded"),
              "test_patients": bundled_test_patients()},
        training={k: v for k, v in training.items() if k != "command"},
        metrics=metrics_summary(evaluation),
    )
    return dataclasses.replace(config, extra=extra)


def json_safe(value: Any) -> Any:
    """NaN -> null (strict JSON), recursively."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def public_evaluation(evaluation: dict[str, Any], repo_id: str) -> dict[str, Any]:
    """The evaluation as published: strict JSON, without local paths (folders by their last name)."""
    public = json_safe(evaluation)
    public["model"] = repo_id
    if "data_dir" in public:
        public["data_dir"] = Path(str(public["data_dir"])).name
    if public.get("external"):
        public["external"] = {**public["external"], "model": repo_id,
                              "folder": Path(str(public["external"]["folder"])).name}
    return public


def write_folder(out: Path, source: ResolvedModel, model: torch.nn.Module, config: ModelConfig, card: str,
                 evaluation: dict[str, Any]) -> Path:
    """Write exactly the files that get pushed; ``model`` holds the weights of ``source``."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.folder / WEIGHTS_FILE, out / WEIGHTS_FILE)
    save_onnx(model, out, config.input_size)
    config.save(out)
    (out / CARD_FILE).write_text(card)
    (out / EVAL_FILE).write_text(json.dumps(evaluation, indent=2, allow_nan=False) + "\n")
    return out


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def verify(model_arg: str, model: torch.nn.Module, config: ModelConfig) -> Segmenter:
    """Load ``model_arg`` back and check it holds the same weights and config."""
    loaded = Segmenter.from_pretrained(model_arg, device="cpu", backend="torch")
    if not same_weights(loaded.model, model) or loaded.config != config:
        raise ValueError(f"{model_arg} does not load back to the same weights and config")
    return loaded


def check_onnx(folder: Path, model: torch.nn.Module, config: ModelConfig) -> None:
    """``folder/model.onnx`` must give the probabilities of ``model`` within the ``auto`` backend's tolerance."""
    probe = synthetic_probe(config.input_size, config.in_channels, config.normalize)
    difference = max_probability_difference(model.eval(), OnnxRunner(folder / ONNX_FILE), probe)
    if difference > AUTO_TOLERANCE:
        raise ValueError(f"the exported {ONNX_FILE} differs from the PyTorch model by {difference:.1e} (more than "
                         f"{AUTO_TOLERANCE:.0e}): report this with the model's config.json")


def push(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create the repo if needed and upload the folder in one commit; returns the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, commit_message=message).oid


def publish(args: argparse.Namespace, workdir: Path) -> int:
    parsed = parse_repo_arg(args.repo_id)
    if parsed is None or parsed[1] is not None:
        raise ValueError(f"--repo-id {args.repo_id!r} must look like ORG/NAME (no @revision)")
    if args.dry_run:
        check_output_dir(Path(args.dry_run))
    else:
        from huggingface_hub import get_token

        if get_token() is None:
            raise ValueError("not logged in to the Hub: run `hf auth login` or set HF_TOKEN (or use --dry-run DIR)")
    patients = args.test_dir or args.data_dir
    if not (patients or args.eval_json):
        raise ValueError("give --test-dir (held-out patient folders) or --data-dir (the full dataset) to evaluate the "
                         "model, or --eval-json with an existing evaluation")
    if args.forms and not patients:
        raise ValueError("--forms scores the held-out patients' slices: give --test-dir or --data-dir (or an "
                         "--eval-json written by `brainseg evaluate --forms`, without --forms)")
    if args.external_truth_glob and not args.external:
        raise ValueError("--external-truth-glob names the label files of --external DIR: give --external too")

    source = resolve_model(args.model)
    config, model = load_model(source)
    segmenter = None  # made only when something runs the model
    if not args.eval_json or args.external:
        segmenter = Segmenter(model, config, source=source.source, device=args.device, revision=source.revision,
                              name=source.name)
    if args.eval_json:
        evaluation = json.loads(Path(args.eval_json).read_text())
    else:
        evaluation = run_evaluation(args, segmenter)
    check_evaluation(evaluation, config)
    check_held_out(evaluation)
    if args.external:
        evaluation["external"] = evaluate_external(segmenter, args.external, args.external_truth_glob,
                                                   on_subject=print_subject)

    run_dir = Path(args.train_dir) if args.train_dir else (None if source.repo_id else find_training_dir(source.folder))
    if run_dir is not None and not (run_dir / "train_config.json").is_file():
        raise ValueError(f"--train-dir {run_dir} has no train_config.json")
    training = read_training_info(run_dir, config, args.train_hardware, args.train_command)
    if training.split not in (None, "patient"):
        raise ValueError(f"the model was trained with the {training.split!r} split, which puts the held-out test "
                         "patients in training: publish only models trained with --split patient")
    final_config = published_config(config, evaluation, training.to_dict())
    card = build_card(args.repo_id, final_config, evaluation, training, count_parameters(model))

    out = Path(args.dry_run) if args.dry_run else workdir / "upload"
    write_folder(out, source, model, final_config, card, public_evaluation(evaluation, args.repo_id))
    verify(str(out), model, final_config)
    check_onnx(out, model, final_config)
    if args.dry_run:
        print(f"dry run: wrote {', '.join(PUBLISHED_FILES)} to {out}; nothing was pushed")
        return 0

    commit = push(out, args.repo_id, args.private, args.commit_message)
    loaded = verify(f"{args.repo_id}@{commit}", model, final_config)
    print(f"pushed {args.repo_id} at commit {commit}; verified by loading {loaded.source}")
    return 0


def publish_in_workdir(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="brainseg-publish-") as tmp:
        return publish(args, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    # HfHubHTTPError is an OSError
    return parse_and_run(build_parser(), publish_in_workdir, argv, (ModelLoadError, ValueError, OSError, ImportError))


if __name__ == "__main__":
    raise SystemExit(main())
