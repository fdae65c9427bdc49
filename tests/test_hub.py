"""Weights through the Hugging Face Hub, against a local Hub stand-in (tests/hub_standin.py).

Loading from the Hub runs in a subprocess: huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE
when it is imported, so each scenario gets a fresh interpreter with its own cache and endpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from brainseg import ModelConfig, ModelLoadError, Segmenter
from brainseg.config import CONFIG_FILE, WEIGHTS_FILE
from brainseg.inference.segmenter import load_model
from brainseg.io.dataset import bundled_test_patients
from brainseg.io.hub import bundled_models, parse_repo_arg, resolve_model
from brainseg.io.weights import save_model
from brainseg.models.unet import build_model

try:
    from hub_standin import FakeHub
except ImportError:  # tests/ collected as a package
    from tests.hub_standin import FakeHub

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_test_token"
LOAD_SCRIPT = r"""
import json, sys
import torch
from safetensors.torch import load_file
from brainseg import ModelLoadError, Segmenter

results = []
for arg, reference in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        seg = Segmenter.from_pretrained(arg, device="cpu")
    except ModelLoadError as exc:
        results.append({"error": str(exc)})
        continue
    ref = load_file(reference)
    state = seg.model.state_dict()
    equal = ref.keys() == state.keys() and all(torch.equal(ref[k], state[k].contiguous()) for k in ref)
    results.append({"source": seg.source, "name": seg.name, "revision": seg.revision, "description": seg.description,
                    "equal": equal, "config": seg.config.to_dict(), "backend": seg.backend,
                    "onnx_path": str(seg.onnx_path)})
print(json.dumps(results))
"""


# ------------------------------------------------------------------------------------------- helpers
def make_model(folder: Path, seed: int = 0, **config: object) -> Path:
    """A tiny random model folder (fast to save, push and load)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(base_channels=4, depth=2, in_channels=3, **config)  # type: ignore[arg-type]
    model = build_model(cfg)
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.dtype.is_floating_point:
                buffer.uniform_(0.5, 1.5)
    return save_model(model, cfg, folder)


def hf_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "BRAINSEG_MODEL"}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_python(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load_all(env: dict[str, str], *cases: tuple[str, Path]) -> list[dict]:
    """Load each (model argument, reference weights) in one fresh interpreter."""
    args = [str(x) for case in cases for x in case]
    proc = run_python(["-c", LOAD_SCRIPT, *args], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def hub():
    server = FakeHub(token=TOKEN).start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------------ local, in-process
@pytest.mark.parametrize("arg, expected", [
    ("org/name", ("org/name", None)),
    ("org/name@main", ("org/name", "main")),
    ("my-org/model.v2@0123456789abcdef0123456789abcdef01234567",
     ("my-org/model.v2", "0123456789abcdef0123456789abcdef01234567")),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ("name-only", None),
    ("/abs/path", None),
    ("./rel/path", None),
    ("a/b/c", None),
])
def test_parse_repo_arg(arg, expected):
    assert parse_repo_arg(arg) == expected


def test_bundled_and_local_folders_load_as_before(tmp_path):
    bundled = Segmenter.from_pretrained(device="cpu")
    assert (bundled.source, bundled.name, bundled.revision) == ("bundled default", "unet-generalist", None)
    folder = make_model(tmp_path / "m", threshold=0.6)
    local = Segmenter.from_pretrained(folder, device="cpu")
    assert local.name == "m"
    assert local.source == str(folder) and local.revision is None and local.config.threshold == 0.6
    assert Segmenter.from_pretrained(str(folder), device="cpu").source == str(folder)


def test_local_failures_raise_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing model folder nor a Hub repo id"):
        resolve_model(str(tmp_path / "missing" / "deeper" / "folder"))
    folder = make_model(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model(str(folder / WEIGHTS_FILE))
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupted"):
        Segmenter.from_pretrained(folder)
    newer = make_model(tmp_path / "newer")
    cfg = json.loads((newer / CONFIG_FILE).read_text())
    (newer / CONFIG_FILE).write_text(json.dumps({**cfg, "version": 99}))
    with pytest.raises(ModelLoadError, match="upgrade brainseg"):
        Segmenter.from_pretrained(newer)
    assert issubclass(ModelLoadError, ValueError)


def test_save_pretrained_round_trips_weights_and_config(tmp_path):
    folder = make_model(tmp_path / "m", threshold=0.65, min_component_px=12, extra={"note": "x"})
    segmenter = Segmenter.from_pretrained(folder, device="cpu")  # channels-last on CPU: saved contiguous
    segmenter.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert ModelConfig.load(saved) == ModelConfig.load(folder) == segmenter.config
    original, again = load_file(folder / WEIGHTS_FILE), load_file(saved / WEIGHTS_FILE)
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    # the one loader builds the configured network; the bundled weights load strictly into it
    config, model = load_model(resolve_model("unet"))
    assert config == ModelConfig.load(bundled_models()["unet"]) and config.arch == "unet"
    bundled, state = load_file(bundled_models()["unet"] / WEIGHTS_FILE), model.state_dict()
    assert bundled.keys() == state.keys() and all(torch.equal(bundled[k], state[k]) for k in bundled)
    wrong = make_model(tmp_path / "wrong")
    config_json = json.loads((wrong / CONFIG_FILE).read_text())
    (wrong / CONFIG_FILE).write_text(json.dumps({**config_json, "base_channels": 8}))
    with pytest.raises(ModelLoadError, match="do not match config.json"):
        load_model(resolve_model(wrong))
    (wrong / CONFIG_FILE).write_text(json.dumps({**config_json, "arch": "vit"}))
    with pytest.raises(ModelLoadError, match="unknown architecture 'vit'"):
        Segmenter.from_pretrained(wrong)


# ------------------------------------------------------------------------------------ Hub, subprocess
@pytest.mark.slow
@pytest.mark.e2e
def test_hub_load_equals_local_then_comes_from_cache(hub, tmp_path):
    folder = make_model(tmp_path / "m", threshold=0.55)
    sha = hub.add_folder("org/tiny", folder)
    env = hf_env(tmp_path, hub.endpoint)
    [first] = load_all(env, ("org/tiny", folder / WEIGHTS_FILE))
    assert first["equal"] and first["revision"] == sha and first["source"] == f"org/tiny@{sha}"
    assert first["name"] == "org/tiny"
    assert first["config"]["threshold"] == 0.55 and sha[:12] in first["description"]
    assert ("HEAD", "/org/tiny/resolve/main/config.json") in hub.requests
    assert ("HEAD", f"/org/tiny/resolve/{sha}/model.safetensors") in hub.requests  # pinned to the commit
    assert any("brainseg" in agent for agent in hub.user_agents)
    hub.stop()
    [cached, pinned] = load_all(env, ("org/tiny", folder / WEIGHTS_FILE), (f"org/tiny@{sha}", folder / WEIGHTS_FILE))
    assert cached == first and pinned["equal"] and pinned["revision"] == sha
    [offline] = load_all({**env, "HF_HUB_OFFLINE": "1"}, ("org/tiny", folder / WEIGHTS_FILE))
    assert offline["equal"] and offline["revision"] == sha


def test_a_published_onnx_graph_is_downloaded_and_run_instead_of_exported(hub, tmp_path):
    from brainseg.inference.backends import save_onnx

    with_graph = make_model(tmp_path / "with", seed=3)
    config, model = load_model(resolve_model(with_graph))
    save_onnx(model.eval(), with_graph, config.input_size)
    hub.add_folder("org/with-graph", with_graph)
    hub.add_folder("org/without-graph", make_model(tmp_path / "without", seed=4))
    env = hf_env(tmp_path, hub.endpoint, BRAINSEG_CACHE=str(tmp_path / "onnx-cache"))
    [published, exported] = load_all(env, ("org/with-graph", with_graph / WEIGHTS_FILE),
                                      ("org/without-graph", tmp_path / "without" / WEIGHTS_FILE))
    assert published["equal"] and published["backend"] == "onnx" and exported["backend"] == "onnx"
    hf_home = str(tmp_path / "hf-home")
    assert published["onnx_path"].startswith(hf_home) and published["onnx_path"].endswith("/model.onnx")
    assert exported["onnx_path"].startswith(str(tmp_path / "onnx-cache")), "no graph on the Hub: exported locally"
    assert len(list((tmp_path / "onnx-cache").rglob("*.onnx"))) == 1, "the published graph was not exported again"


@pytest.mark.slow
@pytest.mark.e2e
def test_hub_revisions_are_pinned(hub, tmp_path):
    v1, v2 = make_model(tmp_path / "v1", seed=1), make_model(tmp_path / "v2", seed=2, threshold=0.4)
    sha1 = hub.add_folder("org/tiny", v1)
    hub.tag("org/tiny", "v1.0", sha1)
    sha2 = hub.add_folder("org/tiny", v2)
    results = load_all(hf_env(tmp_path, hub.endpoint), ("org/tiny@v1.0", v1 / WEIGHTS_FILE),
                       (f"org/tiny@{sha1}", v1 / WEIGHTS_FILE), ("org/tiny", v2 / WEIGHTS_FILE),
                       ("org/tiny@main", v2 / WEIGHTS_FILE))
    assert [r["revision"] for r in results] == [sha1, sha1, sha2, sha2]
    assert all(r["equal"] for r in results)
    assert results[0]["description"] == f"org/tiny @ v1.0 (commit {sha1[:12]})"


@pytest.fixture(scope="module")
def failing_hub(tmp_path_factory):
    """One stand-in with a repo per failure, all loaded once in a single interpreter."""
    tmp_path = tmp_path_factory.mktemp("failures")
    hub = FakeHub(token=TOKEN).start()
    good = make_model(tmp_path / "good")
    config, weights = (good / CONFIG_FILE).read_bytes(), (good / WEIGHTS_FILE).read_bytes()
    hub.add_folder("org/tiny", good)
    hub.create_repo("org/no-weights")
    hub.commit("org/no-weights", {CONFIG_FILE: config})
    hub.create_repo("org/truncated")
    hub.commit("org/truncated", {CONFIG_FILE: config, WEIGHTS_FILE: weights[:5000]})
    hub.create_repo("org/newer")
    hub.commit("org/newer", {CONFIG_FILE: json.dumps({**json.loads(config), "version": 99}).encode(),
                             WEIGHTS_FILE: weights})
    cases = {
        "wrong revision": "org/tiny@no-such-branch",
        "unknown repo": "org/does-not-exist",
        "missing file": "org/no-weights",
        "truncated file": "org/truncated",
        "incompatible config": "org/newer",
        "not a repo id": "just-a-name",
    }
    try:
        results = load_all(hf_env(tmp_path, hub.endpoint), *[(arg, good / WEIGHTS_FILE) for arg in cases.values()])
    finally:
        hub.stop()
    return dict(zip(cases, results))


@pytest.mark.parametrize("case, message", [
    ("wrong revision", "revision 'no-such-branch' does not exist in org/tiny"),
    ("unknown repo", "model repo org/does-not-exist was not found on the Hub"),
    ("missing file", "org/no-weights has no model.safetensors"),
    ("truncated file", "truncated or corrupted"),
    ("incompatible config", "upgrade brainseg"),
    ("not a repo id", "neither an existing model folder nor a Hub repo id"),
])
@pytest.mark.slow
@pytest.mark.e2e
def test_hub_failures_give_one_clear_message(failing_hub, case, message):
    error = failing_hub[case]["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


@pytest.mark.slow
@pytest.mark.e2e
def test_broken_transfers_are_detected(hub, tmp_path):
    folder = make_model(tmp_path / "m")
    hub.add_folder("org/cut", folder)
    hub.add_folder("org/flipped", folder)
    hub.add_folder("org/ok", folder)
    env = hf_env(tmp_path, hub.endpoint)
    hub.truncate_transfer.add(f"org/cut/{WEIGHTS_FILE}")
    hub.corrupt_transfer.add(f"org/flipped/{WEIGHTS_FILE}")  # same size, wrong bytes: only the checksum can tell
    cut, flipped, ok = load_all(env, *[(repo, folder / WEIGHTS_FILE) for repo in ("org/cut", "org/flipped", "org/ok")])
    assert "Consistency check failed" in cut["error"] and "model.safetensors of org/cut" in cut["error"]
    assert "does not match the Hub's checksum" in flipped["error"]
    # a cached blob damaged on disk is noticed and downloaded again
    blob = next((tmp_path / "hf-home" / "hub" / "models--org--ok" / "blobs").glob("?" * 64))
    data = bytearray(blob.read_bytes())
    data[200] ^= 0xFF
    blob.write_bytes(bytes(data))
    [again] = load_all(env, ("org/ok", folder / WEIGHTS_FILE))
    assert ok["equal"] and again["equal"] and again["revision"] == ok["revision"]
    [offline] = load_all({**env, "HF_HUB_OFFLINE": "1"}, ("org/ok", folder / WEIGHTS_FILE))
    assert offline["equal"]


@pytest.mark.slow
@pytest.mark.e2e
def test_offline_without_cache(hub, tmp_path):
    hub.add_folder("org/tiny", make_model(tmp_path / "m"))
    [result] = load_all(hf_env(tmp_path, hub.endpoint, HF_HUB_OFFLINE="1"), ("org/tiny", tmp_path / "m" / WEIGHTS_FILE))
    assert "HF_HUB_OFFLINE is set and org/tiny is not in the local Hub cache" in result["error"]
    assert hub.requests == []


@pytest.mark.slow
@pytest.mark.e2e
def test_unreachable_hub_without_cache(tmp_path):
    server = FakeHub().start()
    endpoint = server.endpoint
    server.stop()  # nothing listens there any more: refused at once, not after the client's ~23 s of retries
    [result] = load_all(hf_env(tmp_path, endpoint), ("org/tiny@v2", tmp_path / "unused"))
    assert f"cannot reach the Hub ({endpoint}) and org/tiny@v2 is not in the local cache" in result["error"]


@pytest.mark.slow
@pytest.mark.e2e
def test_load_segmenter_falls_back_only_when_no_model_was_asked_for(hub, tmp_path):
    folder = make_model(tmp_path / "m")
    sha = hub.add_folder("org/tiny", folder)
    script = r"""
import json, sys
from brainseg import ModelLoadError, load_segmenter
out = {}
seg, msg = load_segmenter(None)
out["env"] = [seg.source, seg.revision, msg]
seg, msg = load_segmenter(None, environ={"BRAINSEG_MODEL": "org/missing"})
out["env_missing"] = [seg.source, msg]
try:
    load_segmenter("org/missing")
except ModelLoadError as exc:
    out["explicit_missing"] = str(exc)
seg, msg = load_segmenter(None, environ={})
out["none"] = [seg.source, msg]
print(json.dumps(out))
"""
    proc = run_python(["-c", script], hf_env(tmp_path, hub.endpoint, BRAINSEG_MODEL="org/tiny"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["env"][:2] == [f"org/tiny@{sha}", sha] and sha[:12] in out["env"][2]
    assert out["env_missing"][0] == "bundled default"
    assert "org/missing" in out["env_missing"][1] and "bundled default model instead" in out["env_missing"][1]
    assert "model repo org/missing was not found" in out["explicit_missing"]
    assert out["none"] == ["bundled default", "Model: bundled default"]


# ------------------------------------------------------------------------------------ publish
def make_run(tmp_path: Path, name: str = "run", split: str = "patient") -> Path:
    """A finished training run: RUN/best (the model), RUN/train_config.json, RUN/log.csv."""
    from brainseg.training.config import TrainConfig

    run = tmp_path / name
    best = make_model(run / "best", threshold=0.6, extra={"best_epoch": 2, "val_slice_dice": 0.5})
    cfg = TrainConfig(data_dir="../data/kaggle_3m", out_dir=str(run), base_channels=4, depth=2, epochs=3, split=split)
    (run / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    with open(run / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "train_loss", "seconds"])
        writer.writeheader()
        writer.writerows({"epoch": e, "train_loss": 0.5, "seconds": 1800.0} for e in (1, 2, 3))
    return best


def make_dataset(tmp_path: Path, patients: list[str]) -> Path:
    """Synthetic slices in the Kaggle layout, under real held-out patient folder names."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for patient in patients:
        folder = root / patient
        folder.mkdir(parents=True)
        for index in (1, 2, 3):
            image = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
            mask = np.zeros((256, 256), np.uint8)
            if index == 2:
                mask[100:140, 90:150] = 255
            Image.fromarray(image).save(folder / f"{patient}_{index}.tif")
            Image.fromarray(mask).save(folder / f"{patient}_{index}_mask.tif")
    return root


def publish(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_python(["-m", "brainseg.cli.publish", *args], env)


@pytest.mark.slow
@pytest.mark.e2e
def test_publish_dry_run_round_trips_and_push_sends_the_same_folder(hub, tmp_path):
    best = make_run(tmp_path)
    data = make_dataset(tmp_path, bundled_test_patients()[:2])
    env = hf_env(tmp_path, hub.endpoint)
    out = tmp_path / "dry"
    proc = publish(env, "--repo-id", "org/brainseg-unet", "--model", str(best), "--test-dir", str(data),
                   "--dry-run", str(out), "--train-hardware", "test CPU")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing was pushed" in proc.stdout and hub.requests == []
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_FILE, "evaluation.json", "model.onnx",
                                                     WEIGHTS_FILE]
    assert (out / WEIGHTS_FILE).read_bytes() == (best / WEIGHTS_FILE).read_bytes()

    # the written folder loads back to the same weights and config, and runs its own model.onnx
    seg = Segmenter.from_pretrained(out, device="cpu")
    assert seg.backend == "onnx" and seg.onnx_path == out / "model.onnx", seg.backend_reason
    reference, state = load_file(best / WEIGHTS_FILE), seg.model.state_dict()
    assert reference.keys() == state.keys() and all(torch.equal(reference[k], state[k].contiguous()) for k in reference)
    config = ModelConfig.load(out)
    assert config.threshold == 0.6 and config.extra["best_epoch"] == 2 and seg.config == config
    metrics = config.extra["metrics"]
    assert (metrics["n_patients"], metrics["n_slices"]) == (2, 6)
    assert metrics["patients"] == bundled_test_patients()[:2]
    assert config.extra["data"]["split"] == "patient" and len(config.extra["data"]["test_patients"]) == 11
    assert config.extra["training"]["epochs_run"] == 3 and config.extra["training"]["hardware"] == "test CPU"

    card = (out / "README.md").read_text()
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert card.startswith("---\n") and "license: cc-by-nc-sa-4.0" in card and "library_name: brainseg" in card
    for text in ("Not for clinical use", "Intended use", "Buda", "Computers in Biology and Medicine", "TCGA-LGG",
                 "CC BY-NC-SA 4.0", "| Dice per slice (empty/empty = 1) | ", f"{evaluation['slice_dice']:.4f}",
                 "brainseg train", "--epochs 3", "3 of 3 planned", "epoch 2", "1 h 30 min", "test CPU",
                 bundled_test_patients()[0]):
        assert text in card, text

    # the real push sends exactly that folder (same evaluation, so the bytes match)
    no_token = publish(env, "--repo-id", "org/brainseg-unet", "--model", str(best), "--eval-json",
                       str(out / "evaluation.json"))
    assert "not logged in" in one_line_error(no_token)
    pushed = publish({**env, "HF_TOKEN": TOKEN}, "--repo-id", "org/brainseg-unet", "--model", str(best),
                     "--eval-json", str(out / "evaluation.json"), "--train-hardware", "test CPU")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    sha = hub.repos["org/brainseg-unet"].refs["main"]
    assert f"at commit {sha}" in pushed.stdout and f"verified by loading org/brainseg-unet@{sha}" in pushed.stdout
    files = hub.files("org/brainseg-unet")
    assert sorted(files) == [".gitattributes", "README.md", CONFIG_FILE, "evaluation.json", "model.onnx", WEIGHTS_FILE]
    for name in ("README.md", CONFIG_FILE, "evaluation.json", "model.onnx", WEIGHTS_FILE):
        assert files[name] == (out / name).read_bytes(), name
    [loaded] = load_all(env, ("org/brainseg-unet", best / WEIGHTS_FILE))
    assert loaded["equal"] and loaded["revision"] == sha and loaded["config"] == config.to_dict()
    assert evaluation["model"] == "org/brainseg-unet" and evaluation["data_dir"] == "data"
    # publishing the same folder again changes nothing on the Hub
    commits = len(hub.repos["org/brainseg-unet"].commits)
    again = publish({**env, "HF_TOKEN": TOKEN}, "--repo-id", "org/brainseg-unet", "--model", str(best),
                    "--eval-json", str(out / "evaluation.json"), "--train-hardware", "test CPU")
    assert again.returncode == 0 and f"at commit {sha}" in again.stdout, again.stderr[-3000:]
    assert len(hub.repos["org/brainseg-unet"].commits) == commits


def test_card_names_the_epoch_of_last_epoch_weights(tmp_path):
    from brainseg.publishing.card import _training
    from brainseg.publishing.facts import read_training_info

    best = make_run(tmp_path)
    last = make_model(best.parent / "last", extra={"epoch": 3, "weights_note": "beat the best epoch on validation"})
    text = _training(read_training_info(best.parent, ModelConfig.load(last)), ModelConfig.load(last))
    assert "3 of 3 planned; weights from epoch 3, the run's last (beat the best epoch on validation)" in text
    assert "best validation Dice" not in text
    text = _training(read_training_info(best.parent, ModelConfig.load(best)), ModelConfig.load(best))
    assert "weights from epoch 2 (best validation Dice)" in text
    swa = make_model(best.parent / "swa", extra={"averaged_epochs": [2, 3], "n_averaged": 2,
                                                 "weights_note": "chosen on validation"})
    text = _training(read_training_info(best.parent, ModelConfig.load(swa)), ModelConfig.load(swa))
    assert ("3 of 3 planned; weights are the average of epochs 2–3 (stochastic weight averaging, BatchNorm "
            "statistics recomputed on the training slices) (chosen on validation)") in text
    info = read_training_info(best.parent, ModelConfig.load(swa)).to_dict()
    assert json.loads(json.dumps(info)) == info  # published inside config.json, which must load back equal


def test_publish_cli_errors_are_one_line(tmp_path, capsys):
    from brainseg.cli.publish import main

    best = make_run(tmp_path)
    leaky_run = make_run(tmp_path, "leaky-run", split="article")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    leaky = tmp_path / "leaky.json"
    metrics = {"slice_dice": 0.5, "slice_iou": 0.4, "tumor_slice_dice": 0.3, "tumor_slice_iou": 0.2,
               "empty_fp_rate": 0.1, "volume_dice": 0.6, "n_slices": 3, "n_tumor_slices": 1, "n_patients": 1}
    leaky.write_text(json.dumps({**metrics, "per_patient_dice": {"TCGA_XX_0000_20000101": 0.6}}))
    held_out = tmp_path / "held-out.json"
    held_out.write_text(json.dumps({**metrics, "per_patient_dice": {bundled_test_patients()[0]: 0.6}}))
    cases = [
        (["--repo-id", "not a repo", "--dry-run", str(tmp_path / "o1"), "--eval-json", str(leaky)], "ORG/NAME"),
        (["--repo-id", "org/x", "--dry-run", str(busy), "--eval-json", str(leaky)], "already holds other files"),
        (["--repo-id", "org/x", "--dry-run", str(tmp_path / "o2")], "give --test-dir (held-out patient folders)"),
        (["--repo-id", "org/x", "--model", str(best), "--dry-run", str(tmp_path / "o3"), "--eval-json", str(leaky)],
         "outside the held-out test split"),
        (["--repo-id", "org/x", "--model", str(tmp_path / "nope" / "x"), "--dry-run", str(tmp_path / "o4"),
          "--eval-json", str(leaky)], "neither an existing model folder"),
        (["--repo-id", "org/x", "--model", str(best), "--dry-run", str(tmp_path / "o5"), "--test-dir",
          str(tmp_path / "no-data")], "does not exist"),
        (["--repo-id", "org/x", "--model", str(leaky_run), "--dry-run", str(tmp_path / "o6"), "--eval-json",
          str(held_out)], "trained with the 'article' split"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, captured.err)


def test_missing_bundled_folder_says_how_to_get_it(monkeypatch, tmp_path):
    """A bundled folder without its files (e.g. a Space export that ships another model): the message says what
    to do."""
    import brainseg.io.hub as hub

    monkeypatch.setattr(hub, "BUNDLED_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(hub.ModelLoadError, match="is not here .*complete checkout or its wheel, or pass a model"):
        hub.resolve_model(None)
