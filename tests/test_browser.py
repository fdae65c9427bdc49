"""The demo in a real browser: Playwright drives Debian Chromium (headless) against app.py.

Screenshots go to ``screenshots/`` (git-ignored). Without Chromium the test skips, except in CI.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from demo_server import REPO, DemoServer, demo_server, largest_tumor_slice
from PIL import Image

from brainseg.app.models import ModelRegistry
from brainseg.app.slice_handlers import SliceHandlers, SliceState
from brainseg.app.slice_tab import LIVE_JS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
CHROMIUM = os.environ.get("BRAINSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WEBGL_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
SCREENSHOTS = REPO / "screenshots"
TIMEOUT_MS = 60_000
SUMMARY = "#summary [data-testid=markdown]"
AREA = re.compile(r"Tumor area:\s*([\d,]+) px")
LIVE_AREA = re.compile(r"Live preview at ([\d.]+): ([\d,]+) px")
SLIDER = "#threshold input[type=range]"
CANVAS = "#overlay canvas.brainseg-live-canvas"


def chromium_path() -> str:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: CI must install Debian chromium")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> DemoServer:
    return demo_server(request)


@contextmanager
def chromium_page(webgl: bool = False):
    """A headless Chromium page; ``webgl`` swaps the GPU switch-off for SwiftShader's software WebGL (3D views)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    args = CHROMIUM_ARGS if not webgl else [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + WEBGL_ARGS
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture()
def page(server: DemoServer):
    with chromium_page() as page:
        page.goto(server.url)
        yield page


@pytest.fixture()
def blank_page():
    """Chromium on an empty page (no server)."""
    with chromium_page() as page:
        yield page


def summary_text(page) -> str:
    return page.locator(SUMMARY).inner_text()


def wait_for_summary(page, pattern: str, old: str | None = None) -> str:
    """Wait until the summary matches ``pattern`` (and differs from ``old``), then return it."""
    page.wait_for_function(
        """([selector, pattern, old]) => {
            const text = document.querySelector(selector).innerText;
            return new RegExp(pattern).test(text) && (old === null || text !== old);
        }""",
        arg=[SUMMARY, pattern, old],
        timeout=TIMEOUT_MS,
    )
    return summary_text(page)


def image_src(page, element_id: str) -> str:
    image = page.locator(f"#{element_id} img").first
    image.wait_for(state="visible")
    return image.get_attribute("src")


def area_px(text: str) -> int:
    match = AREA.search(text)
    assert match, f"no area in {text!r}"
    return int(match.group(1).replace(",", ""))


def wait_live_ready(page) -> None:
    """The browser has the slice's live-view data (sent after each segmentation)."""
    page.locator("#live-threshold [data-ready=true]").wait_for(state="attached")


def slider_x(page, fraction: float) -> tuple[float, float]:
    box = page.locator(SLIDER).bounding_box()
    return box["x"] + fraction * box["width"], box["y"] + box["height"] / 2


def wait_canvas_at_slider_value(page) -> float:
    """Wait until the live canvas was drawn at the slider's current value; return that value."""
    page.wait_for_function(
        """([canvas, number]) => {
            const c = document.querySelector(canvas);
            return c && Number(c.dataset.threshold) === Number(document.querySelector(number).value);
        }""",
        arg=[CANVAS, "#threshold input[type=number]"],
    )
    return float(page.locator("#threshold input[type=number]").input_value())


def canvas_pixels(page, selector: str = CANVAS) -> np.ndarray:
    url = page.evaluate("s => document.querySelector(s).toDataURL('image/png')", selector)
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB"))


def url_pixels(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response, Image.open(io.BytesIO(response.read())) as image:
        return np.asarray(image.convert("RGB"))


def canvas_area(page) -> int:
    """The area of the mask the live canvas last drew."""
    return int(page.locator(CANVAS).get_attribute("data-area-px"))


def live_area(page) -> int:
    """The area the live read-out shows while dragging (the canvas is on top then)."""
    assert not page.locator(CANVAS).evaluate("c => c.hidden"), "the live canvas covers the server's overlay"
    text = page.locator("#live-threshold .brainseg-live-readout").inner_text()
    match = LIVE_AREA.search(text)
    assert match, f"no live area in {text!r}"
    assert int(match.group(2).replace(",", "")) == canvas_area(page)
    return canvas_area(page)


def release_at(page, fraction: float, old_summary: str) -> str:
    """Drag the threshold slider to ``fraction`` of its track, release, and return the server's new summary."""
    page.mouse.move(*slider_x(page, 0.5))
    page.mouse.down()
    page.mouse.move(*slider_x(page, fraction))
    page.mouse.up()
    return wait_for_summary(page, "Tumor area:", old=old_summary)


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"browser_{name}.png"), full_page=True)


def test_upload_threshold_toggle_and_ground_truth(page) -> None:
    image_path, mask_path = largest_tumor_slice()
    disclaimer = page.locator("#disclaimer")
    assert "not a medical device" in disclaimer.inner_text()
    assert "trained with" in page.locator("#model-info").inner_text()

    page.locator("#slice-file input[type=file]").set_input_files(str(image_path))
    first = wait_for_summary(page, "Tumor area:")
    overlay_before = image_src(page, "overlay")
    heat_before = image_src(page, "heatmap")
    assert image_src(page, "mask")
    shoot(page, "1_uploaded")

    page.locator("#truth-file input[type=file]").set_input_files(str(mask_path))
    with_truth = wait_for_summary(page, r"Dice \d\.\d{3} · IoU \d\.\d{3}")
    assert area_px(with_truth) == area_px(first)
    assert image_src(page, "truth") and image_src(page, "agreement")
    assert page.locator("#compare img").count() == 2
    shoot(page, "2_ground_truth")

    changed = release_at(page, 0.98, with_truth)  # the largest tumor shrinks at 0.95 (threshold 0.5 before)
    assert area_px(changed) != area_px(with_truth)
    assert re.search(r"Dice \d\.\d{3}", changed), "the release recomputes Dice"
    assert image_src(page, "overlay") != overlay_before
    assert image_src(page, "heatmap") == heat_before, "a threshold change must not re-run the model"
    shoot(page, "3_threshold")

    before_toggle = summary_text(page)
    checkbox = page.locator("#normalize input[type=checkbox]")
    was_checked = checkbox.is_checked()
    checkbox.click()
    assert checkbox.is_checked() != was_checked
    page.wait_for_function(
        "old => { const i = document.querySelector('#heatmap img'); return i && i.src !== old; }",
        arg=heat_before, timeout=TIMEOUT_MS,
    )
    assert image_src(page, "heatmap") != heat_before
    assert "Tumor area:" in summary_text(page)
    assert page.locator(CANVAS).evaluate("c => c.hidden"), "a new prediction hides the live canvas"
    shoot(page, "4_normalization_toggled")
    assert before_toggle  # the summary stayed readable throughout



def test_model_selector_reruns_the_slice_with_the_transformer(page) -> None:
    image_path, _ = largest_tumor_slice()
    page.get_by_text("Held-out numbers of the bundled models").click()  # collapsed on the first screen
    assert "segformer-b0" in page.locator("#model-metrics").text_content(), "both bundled models' numbers"
    page.locator("#slice-file input[type=file]").set_input_files(str(image_path))
    first = wait_for_summary(page, "Tumor area:")
    heat_before = image_src(page, "heatmap")

    page.locator("#model-choice input").click()
    page.get_by_role("option", name=re.compile("segformer-b0")).click()
    page.wait_for_function(
        "old => { const i = document.querySelector('#heatmap img'); return i && i.src !== old; }",
        arg=heat_before, timeout=TIMEOUT_MS,
    )
    assert "segformer-b0" in page.locator("#model-info").inner_text()
    assert page.locator("#threshold input[type=number]").input_value() == "0.4", "the Transformer's tuned value"
    switched = wait_for_summary(page, "Tumor area:")
    assert area_px(switched) != area_px(first), "another model, another mask"
    shoot(page, "5_model_switched")


def test_examples_load_slice_and_ground_truth(page) -> None:
    examples = page.locator("button.gallery-item")
    examples.first.wait_for(state="visible")
    assert examples.count() >= 2
    tumor_example = page.locator("button.gallery-item", has_text="tumor").filter(has_not_text="no tumor").first
    tumor_example.click()
    text = wait_for_summary(page, r"Dice \d\.\d{3}")
    assert area_px(text) >= 0
    assert image_src(page, "overlay") and image_src(page, "truth")
    shoot(page, "5_example")


def test_dataset_browser_loads_image_and_ground_truth_together(page) -> None:
    patient = page.locator("#patient input")
    patient.click()
    option = page.locator("[role=option]").nth(1)
    name = option.inner_text().strip()
    option.click()
    text = wait_for_summary(page, r"Dice \d\.\d{3}")
    assert area_px(text) >= 0
    assert name.split("_")[2] in page.locator("#slice-file").inner_text(), "the patient's slice is loaded"
    assert "_mask" in page.locator("#truth-file").inner_text(), "with its ground truth"
    assert image_src(page, "truth") and image_src(page, "agreement")
    shoot(page, "6_dataset_browser")


def test_threshold_drag_redraws_in_the_browser_as_the_server_would(page) -> None:
    image_path, _ = largest_tumor_slice()
    page.locator("#slice-file input[type=file]").set_input_files(str(image_path))
    first = wait_for_summary(page, "Tumor area:")
    wait_live_ready(page)
    server_overlay = image_src(page, "overlay")
    joins: list[str] = []
    page.on("request", lambda request: joins.append(request.url) if "/queue/join" in request.url else None)

    page.mouse.move(*slider_x(page, 0.98))
    page.mouse.down()
    high = wait_canvas_at_slider_value(page)
    high_pixels, high_area = canvas_pixels(page), live_area(page)
    page.mouse.move(*slider_x(page, 0.05))
    low = wait_canvas_at_slider_value(page)
    low_pixels, low_area = canvas_pixels(page), live_area(page)
    assert high > 0.9 and low < 0.15
    assert low_area > high_area, "a lower threshold keeps more pixels"
    assert (low_pixels != high_pixels).any(axis=2).sum() >= low_area - high_area, "the drawn overlay changed"
    assert joins == [], "dragging must not call the server"
    assert image_src(page, "overlay") == server_overlay
    shoot(page, "7_threshold_drag")

    page.mouse.up()
    released = wait_for_summary(page, "Tumor area:", old=first)
    assert area_px(released) == low_area, "the browser's mask has the server's area at the released threshold"
    page.wait_for_function("old => document.querySelector('#overlay img').src !== old", arg=server_overlay)
    assert page.locator(CANVAS).evaluate("c => c.hidden"), "the server's overlay is shown after release"
    server_pixels = url_pixels(image_src(page, "overlay"))
    assert server_pixels.shape == low_pixels.shape
    assert np.array_equal(server_pixels, low_pixels), "live canvas and server overlay differ"

    slider = page.locator(SLIDER)
    slider.focus()
    page.keyboard.press("End")  # the keyboard moves the range without a pointer release
    assert wait_canvas_at_slider_value(page) == pytest.approx(0.95)
    keyed_area = canvas_area(page)
    keyed = wait_for_summary(page, "Tumor area:", old=released)
    assert area_px(keyed) == keyed_area


def synthetic_state(size: int) -> SliceState:
    """A noisy slice with a smooth blob of probability and small islands for the small-component removal:
    isolated specks, a 2x2 square (4 px: dropped at 5 px) and a 2x2 square with one diagonal neighbour (5 px
    when 8-connected: kept)."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size] / size
    proba = np.exp(-((yy - 0.4) ** 2 + (xx - 0.5) ** 2) / 0.03)
    proba[rng.random((size, size)) > 0.996] = 0.6
    proba[2:4, 2:4] = 0.7
    proba[size - 5:size - 3, 2:4] = 0.7
    proba[size - 3, 4] = 0.7
    return SliceState(image, np.clip(proba, 0, 1).astype(np.float32), True)


LIVE_PAGE = """<div id="overlay"><div class="frame"><img alt="" src="{src}"></div></div>
<div id="threshold"><input type="range"></div>
<div id="live"><div class="brainseg-live"><small class="brainseg-live-readout"></small></div></div>"""
# app.py's gr.HTML runs assets/app/threshold.js as Function(element, trigger, props, server, upload, watch)
RUN_LIVE_JS = """([code, payload]) => {
    const props = {value: payload, overlay_id: "overlay", slider_id: "threshold"};
    new Function("element", "trigger", "props", "server", "upload", "watch", code)(
        document.querySelector("#live"), () => {}, props, {}, null, () => {});
}"""


@pytest.mark.parametrize("size", [64, 640])
def test_live_overlay_script_draws_the_server_overlay(blank_page, tmp_path: Path, size: int) -> None:
    """assets/app/threshold.js alone (no Gradio) against the server's drawing of the same threshold."""
    from brainseg.config import ModelConfig
    from brainseg.inference.segmenter import Segmenter
    from brainseg.models.unet import build_model
    from brainseg.views.overlay import PREDICTION_COLOUR, contour_thickness, fill_and_contour
    from brainseg.views.planes import gray_slice

    config = ModelConfig(base_channels=2, depth=2, input_size=32, min_component_px=5)
    segmenter = Segmenter(build_model(config), config, source="test", device="cpu")
    state = synthetic_state(size)
    payload = SliceHandlers(ModelRegistry.around(segmenter), str(tmp_path)).live_view(state)
    blank_page.set_content(LIVE_PAGE.format(src=payload["image"]))
    blank_page.evaluate(RUN_LIVE_JS, [LIVE_JS.read_text(), payload])
    blank_page.locator("#live[data-ready=true]").wait_for(state="attached")

    for threshold in (0.05, 0.3, 0.55, 0.65, 0.95):
        blank_page.evaluate("t => document.dispatchEvent(new CustomEvent('brainseg-threshold', {detail: t}))",
                            threshold)
        expected_mask = segmenter.to_mask(state.proba, threshold)
        if threshold < 0.7:  # the islands are in the raw threshold and the removal decides
            assert (state.proba >= threshold).sum() > expected_mask.sum() and expected_mask[size - 3, 4]
        base = gray_slice(state.image)  # the live view draws on the grayscale FLAIR, as the server does
        expected = fill_and_contour(base, expected_mask, PREDICTION_COLOUR)
        drawn = canvas_pixels(blank_page, "#overlay canvas")
        assert int(blank_page.locator("#overlay canvas").get_attribute("data-area-px")) == expected_mask.sum()
        differ = int((drawn != expected).any(axis=2).sum())
        if contour_thickness(state.image.shape) == 1:
            assert differ == 0, f"{differ} px differ at threshold {threshold}"
        else:  # a thick contour: OpenCV's round caps are approximated
            assert differ <= 0.02 * (expected != base).any(axis=2).sum(), f"{differ} px at {threshold}"

    blank_page.evaluate("() => document.dispatchEvent(new CustomEvent('brainseg-threshold', {detail: 0.375}))")
    readout = blank_page.locator(".brainseg-live-readout").inner_text()
    assert "Live preview at 0.38 (the slider step above)" in readout
    assert int(blank_page.locator("#overlay canvas").get_attribute("data-area-px")) == \
        segmenter.to_mask(state.proba, 0.38).sum()
