"""The ONNX Runtime backend against PyTorch on held-out slices, its graph cache, ``auto``, and CPU detection."""
from __future__ import annotations

import builtins
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import link_patient

from brainseg.config import CONFIG_FILE, WEIGHTS_FILE, ModelConfig
from brainseg.cpu import parse_cpuinfo, read_cpu_info
from brainseg.inference.backends import (
    AUTO_TOLERANCE,
    ONNX_FILE,
    WEIGHTS_SHA_KEY,
    BackendError,
    OnnxRunner,
    default_cache_dir,
    ensure_onnx,
    export_onnx,
    file_sha256,
    onnxruntime_available,
    save_onnx,
    select_backend,
)
from brainseg.inference.postprocess import binarize
from brainseg.inference.preprocess import uint8_batch_to_input
from brainseg.inference.segmenter import Segmenter, choose_backend
from brainseg.io.dataset import load_slices, read_mask, scan_dataset
from brainseg.io.hub import bundled_models
from brainseg.io.weights import load_weights, save_weights
from brainseg.models.unet import build_model

UNET_MODEL_DIR = bundled_models()["unet"]


def load_folder(folder: Path) -> tuple[ModelConfig, torch.nn.Module]:
    config = ModelConfig.load(folder)
    model = build_model(config)
    load_weights(model, folder / WEIGHTS_FILE)
    return config, model.eval()


@pytest.fixture(scope="module")
def bundled() -> tuple[ModelConfig, torch.nn.Module]:
    return load_folder(UNET_MODEL_DIR)


@pytest.fixture(scope="module")
def held_out_inputs(lgg_test_dir: Path, bundled) -> torch.Tensor:
    """Model inputs of 8 held-out slices (4 with abnormality, 4 without, spread over the patients) plus their
    horizontal flips, as flip TTA feeds them."""
    config, _ = bundled
    records = [r for p in scan_dataset(lgg_test_dir) for r in p.slices]
    with_abnormality = [r for r in records if read_mask(r.mask_path).any()]
    without = [r for r in records if r not in with_abnormality]
    images, _ = load_slices(with_abnormality[:: len(with_abnormality) // 4][:4] + without[:: len(without) // 4][:4])
    batch = uint8_batch_to_input(torch.from_numpy(images).permute(0, 3, 1, 2), config.normalize)
    return torch.cat([batch, batch.flip(-1)])


@pytest.fixture(scope="module")
def bundled_onnx(bundled, tmp_path_factory) -> Path:
    config, model = bundled
    return ensure_onnx(UNET_MODEL_DIR, model, config.input_size, tmp_path_factory.mktemp("onnx-cache"))


@pytest.fixture()
def model_folder(tmp_path: Path) -> Path:
    """A writable copy of the bundled model folder (weights + config only)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy(UNET_MODEL_DIR / name, folder / name)
    return folder


def torch_proba(model: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(inputs))[:, 0].numpy()


def test_onnx_probabilities_match_pytorch_on_held_out_slices(bundled, bundled_onnx, held_out_inputs) -> None:
    config, model = bundled
    runner = OnnxRunner(bundled_onnx)
    reference = torch_proba(model, held_out_inputs)
    onnx_proba = torch.sigmoid(runner(held_out_inputs))[:, 0].numpy()
    assert runner.num_threads == torch.get_num_threads()
    assert (reference > config.threshold).any(), "the slices should give some positive pixels"
    assert np.abs(onnx_proba - reference).max() < AUTO_TOLERANCE
    for onnx_map, torch_map in zip(onnx_proba, reference):
        assert np.array_equal(binarize(onnx_map, config.threshold, config.min_component_px),
                              binarize(torch_map, config.threshold, config.min_component_px))
    # dynamic batch axis, numpy in -> numpy out, channels-last torch input as the Segmenter passes it
    single = runner(held_out_inputs[:1].numpy())
    assert isinstance(single, np.ndarray) and single.shape == (1, 1, config.input_size, config.input_size)
    assert np.abs(1 / (1 + np.exp(-single[0, 0])) - reference[0]).max() < AUTO_TOLERANCE
    channels_last = held_out_inputs[3:6].contiguous(memory_format=torch.channels_last)
    assert np.abs(torch.sigmoid(runner(channels_last))[:, 0].numpy() - reference[3:6]).max() < AUTO_TOLERANCE


def test_export_records_the_weights_and_leaves_the_model_as_it_was(bundled, tmp_path: Path) -> None:
    config, model = bundled
    model.train()
    try:
        path = export_onnx(model, tmp_path / "graph.onnx", config.input_size, weights_sha256="ab" * 32)
        assert model.training, "export must not switch the caller's model to eval mode"
    finally:
        model.eval()
    runner = OnnxRunner(path)
    assert runner.metadata[WEIGHTS_SHA_KEY] == "ab" * 32
    assert [p.name for p in tmp_path.iterdir()] == ["graph.onnx"], "no temporary file may be left"
    probe = torch.linspace(-1, 1, 3 * config.input_size**2).reshape(1, 3, config.input_size, config.input_size)
    assert np.abs(torch.sigmoid(runner(probe)).numpy() - torch_proba(model, probe)[:, None]).max() < AUTO_TOLERANCE


def test_ensure_onnx_uses_the_graph_beside_current_weights(bundled, model_folder: Path, tmp_path: Path) -> None:
    config, model = bundled
    beside = save_onnx(model, model_folder, config.input_size)
    assert beside == model_folder / ONNX_FILE
    cache = tmp_path / "cache"
    assert ensure_onnx(model_folder, model, config.input_size, cache) == beside
    assert not cache.exists(), "nothing is exported when model.onnx beside the weights is current"


@pytest.mark.slow
def test_stale_or_broken_graph_beside_the_weights_is_replaced_from_the_cache(bundled, model_folder, tmp_path) -> None:
    config, model = bundled
    beside = save_onnx(model, model_folder, config.input_size)
    changed = load_folder(model_folder)[1]
    with torch.no_grad():
        changed.outc.bias += 3.0  # new weights: the old graph no longer describes them
    save_weights(changed, model_folder)
    before = sorted(p.name for p in model_folder.iterdir())
    cache = tmp_path / "cache"

    path = ensure_onnx(model_folder, changed, config.input_size, cache)
    assert path == cache / f"{file_sha256(model_folder / WEIGHTS_FILE)}-{config.input_size}.onnx"
    assert sorted(p.name for p in model_folder.iterdir()) == before, "the model folder is never written to"
    probe = torch.zeros(1, 3, config.input_size, config.input_size)
    new_logits, old_logits = OnnxRunner(path)(probe), OnnxRunner(beside)(probe)
    with torch.inference_mode():
        assert torch.allclose(new_logits, changed(probe), atol=1e-4)
    assert float((new_logits - old_logits).mean()) == pytest.approx(3.0, abs=1e-3)

    stamp = path.stat().st_mtime_ns
    assert ensure_onnx(model_folder, changed, config.input_size, cache) == path
    assert path.stat().st_mtime_ns == stamp, "a current cached graph is reused, not exported again"

    beside.write_bytes(beside.read_bytes()[:1000])  # truncated: unreadable, so not current either
    assert ensure_onnx(model_folder, changed, config.input_size, cache) == path
    path.write_bytes(b"not an onnx graph")
    assert ensure_onnx(model_folder, changed, config.input_size, cache) == path
    assert torch.allclose(OnnxRunner(path)(probe), new_logits), "a broken cached graph is exported again"


def test_graph_for_another_input_size_is_not_reused(bundled, model_folder: Path, tmp_path: Path) -> None:
    config, model = bundled
    save_onnx(model, model_folder, 128)
    path = ensure_onnx(model_folder, model, config.input_size, tmp_path)
    assert path.parent == tmp_path and path.name.endswith(f"-{config.input_size}.onnx")


def test_unwritable_cache_is_a_clear_error_for_onnx_and_a_fallback_for_auto(bundled, tmp_path: Path) -> None:
    config, model = bundled
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder cannot be made under a file")
    with pytest.raises(BackendError, match="set BRAINSEG_CACHE to a writable folder"):
        ensure_onnx(UNET_MODEL_DIR, model, config.input_size, blocked / "cache")
    with pytest.raises(BackendError, match="use backend='torch'"):
        select_backend("onnx", model, UNET_MODEL_DIR, config.input_size, cache_dir=blocked / "cache")
    choice = select_backend("auto", model, UNET_MODEL_DIR, config.input_size, cache_dir=blocked / "cache")
    assert choice.name == "torch" and choice.forward is model and "BRAINSEG_CACHE" in choice.reason


@pytest.mark.slow
def test_auto_picks_onnx_when_probabilities_agree_else_pytorch(bundled, bundled_onnx, held_out_inputs) -> None:
    config, model = bundled
    cache = bundled_onnx.parent
    choice = select_backend("auto", model, UNET_MODEL_DIR, config.input_size, probe=held_out_inputs, cache_dir=cache)
    assert choice.name == "onnx" and isinstance(choice.forward, OnnxRunner) and choice.onnx_path == bundled_onnx
    assert 0 < choice.max_abs_difference < AUTO_TOLERANCE
    default_probe = select_backend("auto", model, UNET_MODEL_DIR, config.input_size, cache_dir=cache)
    assert default_probe.name == "onnx" and 0 < default_probe.max_abs_difference < AUTO_TOLERANCE

    strict = select_backend("auto", model, UNET_MODEL_DIR, config.input_size, cache_dir=cache,
                            tolerance=default_probe.max_abs_difference / 2)
    assert strict.name == "torch" and strict.forward is model and "differ" in strict.reason
    assert select_backend("torch", model, UNET_MODEL_DIR, config.input_size).forward is model
    assert select_backend("auto", model, None, config.input_size).name == "torch"
    with pytest.raises(ValueError, match="choose one of auto, onnx, torch"):
        select_backend("tensorrt", model, UNET_MODEL_DIR, config.input_size)


def test_auto_falls_back_to_pytorch_when_onnxruntime_is_missing(bundled, tmp_path, monkeypatch) -> None:
    config, model = bundled
    assert onnxruntime_available()
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # `import onnxruntime` now fails
    assert not onnxruntime_available()
    choice = select_backend("auto", model, UNET_MODEL_DIR, config.input_size, cache_dir=tmp_path)
    assert choice.name == "torch" and choice.forward is model and "onnxruntime is not installed" in choice.reason
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        select_backend("onnx", model, UNET_MODEL_DIR, config.input_size, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [], "no export without onnxruntime"


def test_auto_falls_back_when_the_import_itself_raises(bundled, tmp_path, monkeypatch) -> None:
    config, model = bundled
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("libonnxruntime.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "onnxruntime")
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    choice = select_backend("auto", model, UNET_MODEL_DIR, config.input_size, cache_dir=tmp_path)
    assert choice.name == "torch" and choice.forward is model


def test_default_cache_dir_follows_the_environment(tmp_path: Path) -> None:
    assert default_cache_dir({"BRAINSEG_CACHE": str(tmp_path)}) == tmp_path / "onnx"
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "brainseg" / "onnx"
    assert default_cache_dir({}) == Path.home() / ".cache" / "brainseg" / "onnx"


INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
AMD_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n"
ARM = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes sha2 bf16 sve\n"


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    name, flags = parse_cpuinfo(INTEL_AMX)
    assert name == "Intel(R) Xeon(R) Platinum 8480+" and {"amx_bf16", "avx512f", "avx2"} <= flags
    assert parse_cpuinfo(AMD_AVX2) == ("AMD EPYC 7B12", frozenset({"fpu", "sse2", "avx", "avx2", "fma"}))
    assert "bf16" in parse_cpuinfo(ARM)[1]


@pytest.mark.parametrize("text, avx2, avx512, native_bf16", [
    (INTEL_AMX, True, True, True), (AMD_AVX2, True, False, False), (ARM, False, False, True), ("", False, False, False),
])
def test_bf16_is_measured_only_with_native_bf16(tmp_path, text, avx2, avx512, native_bf16) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    cpu = read_cpu_info(tmp_path / "cpuinfo")
    assert (cpu.avx2, cpu.avx512, cpu.native_bf16, cpu.bf16_worth_measuring) == (avx2, avx512, native_bf16, native_bf16)
    assert cpu.name and cpu.logical_cores >= 1
    assert cpu.speed_flags() == [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16",
                                            "amx_int8", "asimd", "bf16", "sve") if f in parse_cpuinfo(text)[1]]


def test_this_machines_cpu_flags_come_from_proc_cpuinfo() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    cpu = read_cpu_info()
    first_flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features")))
    assert cpu.flags == frozenset(first_flags.split(":", 1)[1].split())
    assert cpu.describe().startswith(cpu.name)


# ------------------------------------------------------------------------------- through the Segmenter


def held_out_images(lgg_test_dir: Path, count: int = 8) -> np.ndarray:
    """(N, 256, 256, 3) uint8 held-out slices, half with abnormality, spread over the patients."""
    records = [r for p in scan_dataset(lgg_test_dir) for r in p.slices]
    with_abnormality = [r for r in records if read_mask(r.mask_path).any()]
    without = [r for r in records if r not in with_abnormality]
    half = count // 2
    images, _ = load_slices(with_abnormality[:: len(with_abnormality) // half][:half]
                            + without[:: len(without) // half][:half])
    return images


@pytest.fixture()
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ONNX cache for this test (``BRAINSEG_CACHE``), so loads export into it and nowhere else."""
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "brainseg-cache"))
    return tmp_path / "brainseg-cache" / "onnx"


@pytest.mark.slow
def test_segmenter_backends_agree_on_held_out_slices_with_flip_tta(lgg_test_dir, onnx_cache) -> None:
    bundle_before = sorted((p.name, p.stat().st_mtime_ns) for p in UNET_MODEL_DIR.iterdir())
    onnx_seg = Segmenter.from_pretrained("unet", device="cpu", backend="onnx")
    torch_seg = Segmenter.from_pretrained("unet", device="cpu", backend="torch")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in UNET_MODEL_DIR.iterdir()) == bundle_before, \
        "loading the bundled model must not write into its folder"
    assert (onnx_seg.backend, torch_seg.backend) == ("onnx", "torch")
    assert onnx_seg.onnx_path is not None and onnx_seg.onnx_path.parent == onnx_cache
    assert torch_seg.onnx_path is None and isinstance(onnx_seg.model, torch.nn.Module)
    for seg in (onnx_seg, torch_seg):
        seg.config = dataclasses.replace(seg.config, flip_tta=True)

    images = held_out_images(lgg_test_dir)
    batch_onnx, batch_torch = onnx_seg.predict_proba_batch(images, batch_size=3), torch_seg.predict_proba_batch(images)
    assert batch_onnx.shape == batch_torch.shape == (8, 256, 256) and batch_onnx.dtype == np.float32
    assert (batch_torch > torch_seg.config.threshold).any()
    difference = np.abs(batch_onnx - batch_torch).max()
    assert 0 < difference < AUTO_TOLERANCE, "the two backends compute separately and agree"
    for image, proba in zip(images[:3], batch_onnx):
        single = onnx_seg.predict_proba(image)
        assert np.abs(single - torch_seg.predict_proba(image)).max() < AUTO_TOLERANCE
        assert np.abs(single - proba).max() < AUTO_TOLERANCE
        assert np.array_equal(onnx_seg.to_mask(single), torch_seg.to_mask(torch_seg.predict_proba(image)))
    # resized input and constant slices behave as before, whatever the backend
    small = images[0, ::2, ::2]
    assert onnx_seg.predict_proba(small).shape == (128, 128)
    assert np.abs(onnx_seg.predict_proba(small) - torch_seg.predict_proba(small)).max() < AUTO_TOLERANCE
    assert not onnx_seg.predict_proba(np.zeros((256, 256, 3), np.uint8)).any()
    with_blank = np.concatenate([images[:2], np.full((1, 256, 256, 3), 255, np.uint8)])
    assert not onnx_seg.predict_proba_batch(with_blank)[2].any()


@pytest.mark.slow
def test_segmenter_auto_picks_onnx_on_the_cpu_and_pytorch_for_bf16(onnx_cache) -> None:
    auto = Segmenter.from_pretrained("unet", device="cpu")
    assert auto.backend == "onnx" and "within" in auto.backend_reason, auto.backend_reason
    again = Segmenter.from_pretrained("unet", device="cpu")
    assert again.onnx_path == auto.onnx_path and len(list(onnx_cache.iterdir())) == 1, "exported once"
    bf16 = Segmenter.from_pretrained("unet", device="cpu", bf16=True)
    assert bf16.backend == "torch" and "bf16" in bf16.backend_reason
    with pytest.raises(BackendError, match="CPU in fp32 only"):
        Segmenter.from_pretrained("unet", device="cpu", bf16=True, backend="onnx")


def test_on_a_gpu_auto_means_pytorch_and_onnx_is_refused(bundled) -> None:
    config, model = bundled
    gpu = torch.device("cuda")  # only the choice is made: nothing runs on the device
    choice = choose_backend("auto", model, config, gpu, False, UNET_MODEL_DIR)
    assert choice.name == "torch" and choice.forward is model and "not on cuda" in choice.reason
    with pytest.raises(BackendError, match="not on cuda: use device 'cpu'"):
        choose_backend("onnx", model, config, gpu, False, UNET_MODEL_DIR)
    with pytest.raises(ValueError, match="choose one of auto, onnx, torch"):
        choose_backend("fast", model, config, torch.device("cpu"), False, UNET_MODEL_DIR)


def test_segmenter_auto_falls_back_to_pytorch_without_onnxruntime(lgg_test_dir, onnx_cache, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # `import onnxruntime` now fails
    auto = Segmenter.from_pretrained("unet", device="cpu")
    assert auto.backend == "torch" and auto.onnx_path is None
    assert auto.backend_reason == "PyTorch (onnxruntime is not installed)"
    images = held_out_images(lgg_test_dir, 4)
    reference = Segmenter.from_pretrained("unet", device="cpu", backend="torch").predict_proba_batch(images)
    assert np.array_equal(auto.predict_proba_batch(images), reference)
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        Segmenter.from_pretrained("unet", device="cpu", backend="onnx")
    assert not onnx_cache.exists(), "nothing exported without onnxruntime"


def test_a_model_built_in_memory_runs_in_pytorch_unless_onnx_is_asked_for() -> None:
    config = ModelConfig(base_channels=2, depth=2, input_size=32)
    assert Segmenter(build_model(config), config, device="cpu").backend == "torch"
    assert Segmenter(build_model(config), config, device="cpu", backend="auto").backend == "torch"
    with pytest.raises(BackendError, match="needs a model folder"):
        Segmenter(build_model(config), config, device="cpu", backend="onnx")


# ------------------------------------------------------------------------------- command lines


@pytest.mark.slow
def test_evaluate_cli_takes_the_backend_and_records_it(lgg_test_dir, onnx_cache, tmp_path, capsys) -> None:
    from brainseg.cli.evaluate import main as evaluate

    data = tmp_path / "data"
    link_patient(lgg_test_dir / "TCGA_DU_5871_19941206", data / "TCGA_DU_5871_19941206", range(15, 25))
    results = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.json"
        assert evaluate(["--test-dir", str(data), "--backend", backend, "--json", str(out)]) == 0
        results[backend] = json.loads(out.read_text())
        assert results[backend]["backend"] == backend and results[backend]["n_slices"] == 10
    assert results["onnx"]["backend_reason"] == "ONNX Runtime (asked for)"
    for key in ("slice_dice", "volume_dice", "empty_fp_rate"):
        assert results["onnx"][key] == pytest.approx(results["torch"][key], abs=1e-3), key
    capsys.readouterr()
    with pytest.raises(SystemExit):
        evaluate(["--test-dir", str(data), "--backend", "tensorrt"])
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
    assert evaluate(["--test-dir", str(data), "--backend", "onnx", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backend 'onnx' runs on the CPU in fp32 only") and "Traceback" not in err


@pytest.mark.slow
def test_predict_cli_takes_the_backend_and_records_it(lgg_test_dir, onnx_cache, tmp_path, capsys) -> None:
    from brainseg.cli.predict import main as predict

    patient = tmp_path / "TCGA_DU_5871_19941206"
    link_patient(lgg_test_dir / patient.name, patient, range(18, 24))
    reports = {}
    for backend in ("torch", "onnx", "auto"):
        report = tmp_path / f"{backend}.json"
        assert predict([str(patient), "--out-dir", str(tmp_path / backend), "--json", str(report), "--quiet",
                        "--device", "cpu", "--backend", backend]) == 0
        reports[backend] = json.loads(report.read_text())
    assert [reports[b]["backend"] for b in ("torch", "onnx", "auto")] == ["torch", "onnx", "onnx"]
    assert reports["onnx"]["tumor_voxels"] == reports["torch"]["tumor_voxels"] > 0
    assert reports["onnx"]["dice"] == pytest.approx(reports["torch"]["dice"], abs=1e-4)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        predict([str(patient), "--out-dir", str(tmp_path / "x"), "--backend", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def test_app_takes_the_backend_and_shows_it_in_the_model_line(onnx_cache) -> None:
    from brainseg.app.launch import build_parser
    from brainseg.app.models import DEFAULT_BACKEND, load_started_model, model_description

    assert build_parser().parse_args([]).backend == DEFAULT_BACKEND == "auto"
    assert build_parser().parse_args(["--backend", "torch"]).backend == "torch"
    segmenter, note = load_started_model(None, "fp32", "torch")
    assert segmenter.backend == "torch"
    assert "PyTorch (asked for)" in model_description(segmenter, note)
