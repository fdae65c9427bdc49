"""The routed model: which slices go home or away, the members' outputs per slice, loading by reference."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from brainseg import Segmenter
from brainseg.config import ModelConfig
from brainseg.data import load_slices, scan_dataset
from brainseg.forms import present
from brainseg.hub import ModelLoadError
from brainseg.interpolation import interpolate
from brainseg.model import build_model
from brainseg.postprocess import binarize
from brainseg.routing import (
    AWAY,
    HOME,
    RoutedNetwork,
    RouteRule,
    copied_flair,
    goes_away,
    route,
    tissue_extent,
)
from brainseg.skull import DetectorTraining, SkullDetector, detector_accuracy, detector_examples, train_skull_detector
from brainseg.transforms import uint8_batch_to_input
from brainseg.weights import save_model, save_weights
from train import route as route_cli


def head_slice(size: int = 64, rows: tuple[int, int] = (2, 62), cols: tuple[int, int] = (4, 60),
               seed: int = 0) -> np.ndarray:
    """A synthetic uint8 slice: three different random sequences inside a rectangle of tissue, black around."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.uint8)
    image[rows[0]:rows[1], cols[0]:cols[1]] = rng.integers(60, 255, (rows[1] - rows[0], cols[1] - cols[0], 3))
    return image


def model_input(*images: np.ndarray) -> torch.Tensor:
    return uint8_batch_to_input(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), True)


def small_pair() -> tuple[tuple[ModelConfig, torch.nn.Module], tuple[ModelConfig, torch.nn.Module]]:
    torch.manual_seed(0)
    home_config = ModelConfig(base_channels=4, depth=2, threshold=0.2, min_component_px=40)
    away_config = ModelConfig(base_channels=6, depth=3, threshold=0.6, flip_tta=True)
    return (home_config, build_model(home_config).eval()), (away_config, build_model(away_config).eval())


def test_the_rule_sends_missing_sequences_and_small_brains_away_and_whole_three_sequence_heads_home() -> None:
    head = head_slice()
    flair_t1c = head.copy()
    flair_t1c[..., 0] = head[..., 1]
    flair_only = np.repeat(head[..., 1:2], 3, axis=-1)
    small = head_slice(rows=(16, 48), cols=(20, 44))  # spans 0.5 and 0.375 of the frame
    x = model_input(head, flair_t1c, flair_only, small)
    assert copied_flair(x, 0.02).tolist() == [False, True, True, False]
    assert tissue_extent(x).tolist() == pytest.approx([60 / 64, 60 / 64, 60 / 64, 0.5])
    assert goes_away(x, RouteRule()).tolist() == [False, True, True, True]
    assert goes_away(x, RouteRule(min_extent=0.4)).tolist() == [False, True, True, False]
    # the rule reads the input as it is scaled, so the per-image normalization does not change it
    raw = uint8_batch_to_input(torch.from_numpy(np.stack([head, small])).permute(0, 3, 1, 2), False)
    assert goes_away(raw, RouteRule()).tolist() == [False, True]


def test_the_rule_on_held_out_slices_keeps_lgg_slices_home_and_sends_every_outside_form_away(lgg_test_dir) -> None:
    records = [r for patient in scan_dataset(lgg_test_dir)[:3] for r in patient.slices]
    images, masks = load_slices(records)
    rule = RouteRule()
    away = {form: goes_away(model_input(*present(form, images, masks)[0]), rule).float().mean().item()
            for form in ("as_is", "flair_only", "flair_t1c", "half_frame", "stripped_flair_only")}
    assert away["as_is"] < 0.05  # only the odd top-of-head slice spans less than 0.6 of the frame
    assert away["flair_only"] == away["flair_t1c"] == away["half_frame"] == away["stripped_flair_only"] == 1.0


def test_each_slice_gets_its_members_output_shifted_by_its_own_thresholds_logit() -> None:
    home, away = small_pair()
    config, network = route(home, away, RouteRule(), sources=("h", "a"))
    head = head_slice()
    x = model_input(head, np.repeat(head[..., 1:2], 3, axis=-1), head_slice(seed=1))
    with torch.no_grad():
        out = network(x)
        home_logit = home[1](x)
        away_proba = (torch.sigmoid(away[1](x)) + torch.sigmoid(away[1](x.flip(-1))).flip(-1)) / 2
        away_logit = torch.logit(away_proba.clamp(1e-6, 1 - 1e-6))
    assert torch.allclose(out[[0, 2]], home_logit[[0, 2]] - math.log(0.2 / 0.8), atol=1e-5)
    assert torch.allclose(out[1], away_logit[1] - math.log(0.6 / 0.4), atol=1e-4)
    # marked at the routed threshold 0.5 exactly where the chosen member passes its own threshold
    assert torch.equal(torch.sigmoid(out[0]) > 0.5, torch.sigmoid(home_logit[0]) > 0.2)
    assert torch.equal(torch.sigmoid(out[1]) > 0.5, away_proba[1] > 0.6)
    assert (config.arch, config.threshold, config.min_component_px, config.flip_tta) == ("routed", 0.5, 40, False)
    assert config.route == {"copy_tolerance": 0.02, "min_extent": 0.6, "skull_detector": False, "sources": ["h", "a"]}
    assert [m["base_channels"] for m in config.members] == [4, 6]


def test_a_saved_routed_folder_loads_with_its_weights_or_from_its_sources_and_exports_one_onnx_graph(tmp_path) -> None:
    home, away = small_pair()
    for name, (config, network) in (("home", home), ("away", away)):
        save_model(network, config, tmp_path / name)
    config, network = route(home, away, RouteRule(), sources=(str(tmp_path / "home"), str(tmp_path / "away")))
    save_model(network, config, tmp_path / "with-weights")
    (tmp_path / "by-reference").mkdir()
    config.save(tmp_path / "by-reference")
    head = head_slice()
    batch = np.stack([head, np.repeat(head[..., 1:2], 3, axis=-1)])
    expected = Segmenter(network, config, device="cpu", backend="torch").predict_proba_batch(batch)
    for folder, backend in (("with-weights", "torch"), ("with-weights", "onnx"), ("by-reference", "torch"),
                            ("by-reference", "auto")):
        loaded = Segmenter.from_pretrained(tmp_path / folder, device="cpu", backend=backend)
        assert isinstance(loaded.model, RoutedNetwork) and loaded.config == config
        assert loaded.backend == ("torch" if backend == "torch" else "onnx"), loaded.backend_reason
        assert np.abs(loaded.predict_proba_batch(batch) - expected).max() < 1e-4, (folder, backend)
    assert not (tmp_path / "by-reference" / "model.safetensors").exists()
    # by reference, each member runs ONNX Runtime from its own folder (only the rule runs in PyTorch)
    assert all(runner is not None for runner in loaded.model.runners)
    assert loaded.backend_reason.startswith("home ONNX Runtime") and "; away ONNX Runtime" in loaded.backend_reason


def test_a_member_that_changed_since_routing_is_refused_with_what_to_do(tmp_path) -> None:
    home, away = small_pair()
    for name, (config, network) in (("home", home), ("away", away)):
        save_model(network, config, tmp_path / name)
    config, _ = route(home, away, RouteRule(), sources=(str(tmp_path / "home"), str(tmp_path / "away")))
    config.save(tmp_path / "routed")
    retuned = ModelConfig.load(tmp_path / "away")
    retuned.threshold = 0.45
    retuned.save(tmp_path / "away")
    with pytest.raises(ModelLoadError, match=r"member 1 .* no longer matches .* re-run python -m train.route"):
        Segmenter.from_pretrained(tmp_path / "routed", device="cpu")
    # notes in extra are not behaviour: editing them keeps the folder loadable
    retuned.threshold = 0.6
    retuned.extra["note"] = "edited"
    retuned.save(tmp_path / "away")
    assert isinstance(Segmenter.from_pretrained(tmp_path / "routed", device="cpu").model, RoutedNetwork)


def test_routed_configs_are_checked() -> None:
    member = ModelConfig(base_channels=4, depth=2).to_dict()
    with pytest.raises(ValueError, match="two members"):
        ModelConfig(arch="routed", members=[member] * 3)
    with pytest.raises(ValueError, match="only a routed config has a route"):
        ModelConfig(route={"min_extent": 0.5})
    routed = ModelConfig(arch="routed", members=[member, member]).to_dict()
    with pytest.raises(ValueError, match="itself a routed model"):
        ModelConfig(arch="ensemble", members=[member, routed])
    with pytest.raises(ValueError, match="min_extent"):
        RouteRule(min_extent=1.5)
    home, away = small_pair()
    with pytest.raises(ValueError, match="routed"):
        interpolate(route(home, away, RouteRule()), home, 0.5)
    assert "route" not in ModelConfig().to_dict()


@pytest.mark.slow
def test_route_cli_writes_a_folder_that_loads_the_bundled_members_and_gives_their_masks(tmp_path, capsys,
                                                                                     lgg_test_dir, monkeypatch) -> None:
    """Home slices get exactly the bundled U-Net's masks, FLAIR-only slices exactly the away model's."""
    out = tmp_path / "routed"
    assert route_cli.main(["--home", "unet", "--away", "unet-robust", "--out-dir", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["route"]["sources"] == ["unet", "unet-robust"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    patient = scan_dataset(lgg_test_dir)[0]
    images, masks = load_slices(list(patient.slices))
    tumor = np.flatnonzero(masks.any(axis=(1, 2)))[:4]
    routed = Segmenter.from_pretrained(out, device="cpu")
    for name, batch in (("unet", images[tumor]), ("unet-robust", present("flair_only", images[tumor], masks)[0])):
        member = Segmenter.from_pretrained(name, device="cpu", backend="torch")
        # the member's own threshold, the routed minimum component size (the home model's)
        assert all(np.array_equal(routed.to_mask(r), binarize(m, member.config.threshold,
                                                              routed.config.min_component_px))
                   for r, m in zip(routed.predict_proba_batch(batch), member.predict_proba_batch(batch))), name
    assert routed.model.members[HOME] is not routed.model.members[AWAY]
    # a bundled member's name means the bundled model, even where a folder of that name is in the working directory
    tiny = ModelConfig(base_channels=4, depth=2)
    save_model(build_model(tiny), tiny, tmp_path / "unet")
    monkeypatch.chdir(tmp_path)
    assert Segmenter.from_pretrained(out, device="cpu", backend="torch").config == routed.config


def test_the_skull_detector_learns_stripped_slices_from_some_patients_and_spots_them_in_another(lgg_test_dir) -> None:
    """Trained on two patients' slices (as they are vs skull-stripped), it tells them apart on a third's."""
    patients = scan_dataset(lgg_test_dir)
    train_images = np.concatenate([load_slices(list(p.slices[8:30]))[0] for p in patients[:2]])
    test_images = load_slices(list(patients[2].slices[8:30]))[0]
    settings = DetectorTraining(epochs=40, batch_size=16, seed=1)
    detector = train_skull_detector(*detector_examples(train_images), settings)
    accuracy = detector_accuracy(detector, *detector_examples(test_images))
    assert accuracy["as_is"] >= 0.9 and accuracy["skull_stripped"] >= 0.9, accuracy
    again = train_skull_detector(*detector_examples(train_images), settings)  # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(detector.state_dict().values(), again.state_dict().values()))
    small, labels = detector_examples(test_images, chunk=5)  # made in chunks: the same inputs
    assert labels.tolist() == [0.0] * (len(labels) // 2) + [1.0] * (len(labels) // 2)
    assert small.shape == (len(labels), 3, 64, 64)
    assert torch.allclose(small, detector_examples(test_images)[0])
    # blind to the normalization toggle: the same calls on the unnormalized input
    raw = uint8_batch_to_input(torch.from_numpy(test_images[:4]).permute(0, 3, 1, 2), False)
    with torch.no_grad():
        assert torch.equal(detector(raw) > 0, detector(model_input(*test_images[:4])) > 0)


def test_a_routed_model_with_a_detector_keeps_its_weights_in_its_folder_and_saves_self_contained(tmp_path) -> None:
    home, away = small_pair()
    for name, (config, network) in (("home", home), ("away", away)):
        save_model(network, config, tmp_path / name)
    torch.manual_seed(3)
    detector = SkullDetector().eval()
    config, network = route(home, away, RouteRule(skull_detector=True), detector=detector,
                            sources=(str(tmp_path / "home"), str(tmp_path / "away")))
    head = head_slice()
    x = model_input(head, head_slice(seed=4))
    with torch.no_grad():
        flagged = detector(x) > 0
        assert torch.equal(network.goes_away(x), flagged | goes_away(x, RouteRule()))
    (tmp_path / "routed").mkdir()
    save_weights(detector, tmp_path / "routed")
    config.save(tmp_path / "routed")
    loaded = Segmenter.from_pretrained(tmp_path / "routed", device="cpu", backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.detector.state_dict().values(),
                                                 detector.state_dict().values()))
    batch = np.stack([head, head_slice(seed=4)])
    expected = loaded.predict_proba_batch(batch)
    loaded.save_pretrained(tmp_path / "whole")
    whole = Segmenter.from_pretrained(tmp_path / "whole", device="cpu", backend="torch")
    assert "sources" not in whole.config.route and whole.config.route["skull_detector"]
    assert np.abs(whole.predict_proba_batch(batch) - expected).max() < 1e-6
    with pytest.raises(ValueError, match="needs a detector"):
        RoutedNetwork(home[1], away[1], (0.5, 0.5), (False, False), RouteRule(skull_detector=True))


@pytest.mark.slow
def test_route_cli_trains_the_skull_detector_on_training_patients_only(tmp_path, capsys, lgg_test_dir) -> None:
    from conftest import link_standin_patients

    data = tmp_path / "data"
    link_standin_patients(lgg_test_dir, data, [range(8, 20), range(20, 32), range(10, 22), range(14, 26)])
    out = tmp_path / "routed"
    assert route_cli.main(["--home", "unet", "--away", "unet-robust", "--out-dir", str(out), "--skull-detector",
                           "--data-dir", str(data), "--val-fraction", "0.25", "--detector-epochs", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["skull_detector_trained_on"] == "3 training patients"
    assert set(printed["skull_detector_validation"]) == {"as_is", "skull_stripped"}
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").stat().st_size < 100_000  # the detector only: members stay where they are
    assert ModelConfig.load(out).extra["skull_detector_validation"] == printed["skull_detector_validation"]
    assert isinstance(Segmenter.from_pretrained(out, device="cpu").model.detector, SkullDetector)
    assert route_cli.main(["--home", "unet", "--away", "unet-robust", "--out-dir", str(out),
                           "--skull-detector"]) == 2
    assert "give --data-dir" in capsys.readouterr().err
