"""The app without a server: CLI, data folder resolution, dataset browser helpers, UI wiring."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import tifffile

import brainseg
from brainseg.app.gallery import DatasetIndex, curated_examples, largest_tumor_position, mask_areas
from brainseg.app.launch import build_demo, build_parser, resolve_data_dir
from brainseg.app.models import DEFAULT_PRECISION, ModelRegistry, external_cell, load_started_model
from brainseg.app.shared import slider_steps
from brainseg.app.slice_handlers import (
    START_TEXT,
    DatasetBrowser,
    LiveOutputs,
    SliceHandlers,
    SliceOutputs,
    SliceState,
    clear_all,
)
from brainseg.app.slice_tab import DATA_DIR_ENV
from brainseg.config import ModelConfig
from brainseg.inference.segmenter import Segmenter
from brainseg.io.slices import decode_image
from brainseg.models.unet import build_model

TUMOR_PX = {2: 40, 3: 300, 4: 120}  # slice number -> square tumor area (others empty)


def synthetic_dataset(root: Path, patients: int = 3, slices: int = 6) -> Path:
    """A Kaggle-layout folder of synthetic noise slices with square masks (no real data)."""
    rng = np.random.default_rng(0)
    for p in range(patients):
        folder = root / f"TCGA_AB_{1000 + p}_2000010{p + 1}"
        folder.mkdir(parents=True)
        for n in range(1, slices + 1):
            tifffile.imwrite(folder / f"{folder.name}_{n}.tif", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            mask = np.zeros((32, 32), np.uint8)
            side = int(round(TUMOR_PX.get(n, 0) ** 0.5)) if p != 1 else 0  # patient 1 has no tumor
            mask[:side, :side] = 255
            tifffile.imwrite(folder / f"{folder.name}_{n}_mask.tif", mask)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("kaggle_3m"))


@pytest.fixture(scope="module")
def tiny_segmenter() -> Segmenter:
    config = ModelConfig(base_channels=2, depth=2, input_size=32)
    return Segmenter(build_model(config), config, source="tiny test model", device="cpu")


def test_dataset_index_and_positions(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    assert len(index.names) == 3
    first = index.patient(index.names[0])
    assert [int(a) for a in mask_areas(first)] == [0, 36, 289, 121, 0, 0]
    assert largest_tumor_position(first) == 2
    assert largest_tumor_position(index.patient(index.names[1])) == 3  # no tumor: the middle slice
    assert index.slice(index.names[0], 0).index == 1 and index.slice(index.names[0], 99).index == 6
    with pytest.raises(ValueError, match="unknown patient"):
        index.patient("TCGA_XX_0000_19990101")


def test_curated_examples_have_tumor_and_empty_slices(dataset: Path) -> None:
    examples = curated_examples(DatasetIndex(dataset).patients)
    tumors = [e for e in examples if e.tumor_px]
    assert tumors and any(e.tumor_px == 0 for e in examples)
    assert tumors[0].tumor_px == 289 and tumors[0].record.index == 3
    assert any(e.tumor_px == 121 for e in tumors), "one smaller tumor as well"
    assert "slice 3 · tumor 289 px" in tumors[0].label
    assert examples[-1].label.endswith("no tumor")


def test_data_dir_comes_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv(DATA_DIR_ENV, "/data/lgg")
    assert resolve_data_dir(None) == "/data/lgg"
    assert resolve_data_dir("/other") == "/other"


def test_cli_defaults_are_loopback_friendly() -> None:
    args = build_parser().parse_args([])
    assert args.host is None and args.port is None and not args.share and args.model is None
    assert args.precision == DEFAULT_PRECISION
    args = build_parser().parse_args(["--host", "0.0.0.0", "--port", "7000", "--share", "--model", "m",
                                      "--data-dir", "d"])
    assert (args.host, args.port, args.share, args.model, args.data_dir) == ("0.0.0.0", 7000, True, "m", "d")


def test_bundled_model_loads_in_the_chosen_precision() -> None:
    assert load_started_model(None, "fp32")[0].bf16 is False
    assert load_started_model(None, "bf16")[0].bf16 is True


def endpoints(demo) -> set[str]:
    return {dep.api_name for dep in demo.fns.values() if dep.api_name and dep.api_visibility == "public"}


def test_ui_with_dataset_has_browser_examples_and_public_api(tiny_segmenter: Segmenter, dataset: Path) -> None:
    demo = build_demo(tiny_segmenter, dataset)
    assert endpoints(demo) == {"segment", "threshold", "segment_volume", "volume_threshold"}
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"disclaimer", "slice-file", "truth-file", "threshold", "normalize", "patient", "compare"} <= ids
    assert "no-data-hint" not in ids
    assert any(c["type"] == "dataset" for c in config["components"]), "the examples gallery"
    slider = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "threshold")
    assert (slider["props"]["minimum"], slider["props"]["maximum"], slider["props"]["value"]) == (
        0.05, 0.95, tiny_segmenter.config.threshold)  # starts at the model's tuned threshold


def test_ui_without_dataset_explains_how_to_get_examples(tiny_segmenter: Segmenter) -> None:
    demo = build_demo(tiny_segmenter, None)
    config = demo.get_config_file()
    hint = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "no-data-hint")
    assert "--data-dir" in hint["props"]["value"] and DATA_DIR_ENV in hint["props"]["value"]
    disclaimer = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "disclaimer")
    assert "not a medical device" in disclaimer["props"]["value"]


def wired(demo, api_name: str) -> tuple[list[str | None], list[str | None]]:
    """elem_ids (None for State) of the inputs and outputs of the event behind ``api_name``."""
    config = demo.get_config_file()
    elem = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    dep = next(d for d in config["dependencies"] if d["api_name"] == api_name)
    return [elem[i] for i in dep["inputs"]], [elem[i] for i in dep["outputs"]]


def test_outputs_are_wired_in_the_order_of_the_named_fields(tiny_segmenter: Segmenter) -> None:
    demo = build_demo(tiny_segmenter, None)
    inputs, outputs = wired(demo, "segment")
    assert inputs == ["slice-file", "threshold", "normalize", "truth-file", "model-choice"]
    api_order = ["mask", "stats", "overlay", "heatmap", "truth", "agreement", "compare", "summary"]
    assert outputs == [*api_order, None] and list(SliceOutputs._fields) == [*api_order, "state"]
    inputs, outputs = wired(demo, "threshold")
    assert inputs == [None, "threshold"]
    assert outputs == ["mask", "stats", "overlay", "agreement", "compare", "summary"]
    assert outputs == list(LiveOutputs._fields)


def test_dragging_the_threshold_runs_only_in_the_browser(tiny_segmenter: Segmenter) -> None:
    config = build_demo(tiny_segmenter, None).get_config_file()
    elem = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    triggers = {dep["id"]: [(elem.get(target), event) for target, event in dep["targets"]]
                for dep in config["dependencies"]}
    on_drag = [dep for dep in config["dependencies"] if ("threshold", "input") in triggers[dep["id"]]]
    assert len(on_drag) == 1 and not on_drag[0]["backend_fn"] and "brainseg-threshold" in on_drag[0]["js"]
    server = next(dep for dep in config["dependencies"] if dep["api_name"] == "threshold")
    assert triggers[server["id"]] == [("threshold", "release"), ("live-threshold", "submit")]
    live = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "live-threshold")
    assert "brainseg-threshold" in live["props"]["js_on_load"] and live["props"]["props"]["overlay_id"] == "overlay"


def data_url_pixels(url: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    header, data = url.split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.asarray(image)


def test_live_view_data_gives_the_server_threshold_masks(tiny_segmenter: Segmenter, tmp_path: Path) -> None:
    steps = slider_steps()
    assert len(steps) == 91 and (steps[0], steps[32], steps[-1]) == (0.05, 0.37, 0.95)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    # every slider step itself (the >= boundary), the values just below it, and random values
    exact = np.array(steps, np.float32)
    proba = np.concatenate([exact, np.nextafter(exact, np.float32(0)), rng.random(1200 - 2 * len(steps))])
    state = SliceState(image, proba.astype(np.float32).reshape(30, 40), True)
    handlers = SliceHandlers(ModelRegistry.around(tiny_segmenter), str(tmp_path / "cache"))

    view = handlers.live_view(state)
    assert (view["width"], view["height"]) == (40, 30) and view["thresholds"] == list(steps)
    # the slice's FLAIR channel in gray (R = G = B), the base the overlays are drawn on, never the RGB composite
    assert np.array_equal(data_url_pixels(view["image"]), np.repeat(image[..., 1:2], 3, axis=2))
    levels = data_url_pixels(view["levels"])
    for k, threshold in enumerate(steps):
        assert np.array_equal(levels > k, state.proba >= threshold), f"step {threshold}"
        assert np.array_equal(levels > k, tiny_segmenter.to_mask(state.proba, threshold))  # no components to drop
    assert view["min_component_px"] == tiny_segmenter.config.min_component_px == 0
    assert view["contour"] == [(0, 0)]  # a 1-px contour at this size
    assert view["tint"][0][100] == round(100 * 0.65 + 255 * 0.35)
    assert handlers.live_view(None) is None


def png_pixels(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def test_handlers_segment_and_redraw_without_a_server(tiny_segmenter: Segmenter, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image_file, truth_file = tmp_path / "slice.tif", tmp_path / "slice_mask.tif"
    tifffile.imwrite(image_file, rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    truth = np.zeros((40, 48), np.uint8)
    truth[5:20, 10:30] = 255
    tifffile.imwrite(truth_file, truth)
    handlers = SliceHandlers(ModelRegistry.around(tiny_segmenter), str(tmp_path / "cache"))

    first = handlers.segment(str(image_file), 0.5, True, str(truth_file))
    state = first.state
    expected = tiny_segmenter.to_mask(state.proba, 0.5)
    assert np.array_equal(png_pixels(first.mask) == 255, expected)
    assert first.stats["area_px"] == int(expected.sum()) and first.stats["truth_area_px"] == 300
    assert (first.stats["width"], first.stats["height"]) == (48, 40)
    assert first.compare == (first.truth, first.overlay) and png_pixels(first.heatmap).shape == (40, 48, 3)

    threshold = float(np.median(state.proba))  # a threshold that splits the map
    live = handlers.rethreshold(state, threshold)
    fresh = handlers.segment(str(image_file), threshold, True, str(truth_file))
    assert live == fresh.live() and live.stats["threshold"] == round(threshold, 4)
    assert np.array_equal(png_pixels(live.mask) == 255, tiny_segmenter.to_mask(state.proba, threshold))

    no_truth = handlers.change_truth(state, None, threshold)
    assert no_truth.truth is None and no_truth.compare is None and no_truth.agreement is None
    assert no_truth.stats["dice"] is None and no_truth.mask == live.mask

    assert all(isinstance(v, type(gr.skip())) for v in handlers.rethreshold(None, 0.5))
    assert all(isinstance(v, type(gr.skip())) for v in handlers.change_truth(None, str(truth_file), 0.5))
    cleared = clear_all()
    assert len(cleared) == len(SliceOutputs._fields) + 1 and cleared[SliceOutputs._fields.index("summary")]
    assert [v for v in cleared if v is not None] == [START_TEXT]
    with pytest.raises(gr.Error, match="Upload a slice first"):
        handlers.segment(None, 0.5, True, None)


def test_dataset_browser_picks_the_largest_tumor_slice(dataset: Path) -> None:
    index = DatasetIndex(dataset)
    browser = DatasetBrowser(index)
    name = index.names[0]
    slider = browser.choose_patient(name)
    assert (slider.value, slider.maximum) == (3, 6)
    picked = browser.pick_slice(name, 3)
    assert picked.image_file.endswith(f"{name}_3.tif") and picked.truth_file.endswith(f"{name}_3_mask.tif")
    assert "with its ground truth" in picked.caption
    assert all(isinstance(v, type(gr.skip())) for v in browser.pick_slice(None, 3))


def test_model_selector_lists_the_bundled_models_and_their_held_out_numbers(tiny_segmenter: Segmenter) -> None:
    config = build_demo(tiny_segmenter, None).get_config_file()
    props = {c["props"]["elem_id"]: c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    choices = [value for _, value in props["model-choice"]["choices"]]
    assert choices == ["unet-generalist", "unet", "segformer-b0", "tiny test model"]
    assert props["model-choice"]["value"] == "tiny test model", "the model the app was started with"
    table = props["model-metrics"]["value"]
    for name, folder in brainseg.bundled_models().items():
        metrics = json.loads((folder / "metrics.json").read_text())
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        external = metrics["external"]["mean_dice"]
        assert row.split(" | ")[1:] == [f"{metrics['slice_dice']:.3f}", f"{metrics['volume_dice']:.3f}",
                                        f"{metrics['tumor_slice_dice']:.3f}", f"{metrics['empty_fp_rate']:.3f}",
                                        f"{external['all channels']:.3f} / {external['flair only']:.3f} |"]
    assert external_cell({"slice_dice": 0.9}) == "not measured"
    bundled = ModelRegistry.around(Segmenter.from_pretrained("unet", backend="torch"), backend="torch")
    assert bundled.started == "unet"
    assert list(bundled.sources) == ["unet-generalist", "unet", "segformer-b0"], \
        "no duplicate entry"


def test_switching_models_reruns_the_slice_with_the_chosen_models_threshold(tmp_path: Path) -> None:
    from demo_server import largest_tumor_slice

    image_file, truth_file = largest_tumor_slice()
    unet = Segmenter.from_pretrained("unet", backend="torch")
    models = ModelRegistry.around(unet, backend="torch")
    handlers = SliceHandlers(models, str(tmp_path / "cache"))
    first = handlers.segment(str(image_file), unet.config.threshold, True, str(truth_file))
    assert first.state.model == "unet"

    info, slider, checkbox = handlers.choose_model("segformer-b0")
    segformer = models.get("segformer-b0")
    assert models.get("segformer-b0") is segformer, "loaded once, then cached"
    assert segformer.config.arch != unet.config.arch and "segformer-b0" in info
    assert (slider.value, checkbox.value) == (segformer.config.threshold, segformer.config.normalize) == (0.4, True)
    switched = handlers.resegment(first.state, slider.value, checkbox.value, "segformer-b0")
    state = switched.state
    assert state.model == "segformer-b0" and state.truth is first.state.truth
    assert np.abs(state.proba - first.state.proba).max() > 0.1, "another model, another probability map"
    assert np.array_equal(state.proba, segformer.predict_proba(decode_image(str(image_file))))
    assert np.array_equal(png_pixels(switched.mask) == 255, segformer.to_mask(state.proba, 0.4))
    # a threshold redraw post-processes with the model that made the map (its min. component size, not the U-Net's)
    live = handlers.rethreshold(state, 0.3)
    assert np.array_equal(png_pixels(live.mask) == 255, segformer.to_mask(state.proba, 0.3))
    assert handlers.live_view(state)["min_component_px"] == segformer.config.min_component_px != \
        unet.config.min_component_px
    assert all(isinstance(v, type(gr.skip())) for v in handlers.resegment(None, 0.5, True, "unet"))
    with pytest.raises(gr.Error, match="Unknown model"):
        models.get("nope")
