"""The Volume tab as a radiologist reads it, in a real browser (Playwright + Debian Chromium, 1400 x 900) on a BRATS
scan from ``../shared/data/external-brats2013``: nothing but the uploads before a run; then the result card and
three grayscale planes without scrolling, a click linking the planes through one voxel, a 3D mesh enclosing the
card's volume, and a PDF report with one page per section. Screenshots of each state go to
``artifacts/screenshots/`` (git-ignored; CI keeps them), the measured redraw times to ``artifacts/timings.json``."""
from __future__ import annotations

import io
import json
import re
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BRATS_SUBJECT, EXTERNAL_DIR
from demo_server import DemoServer
from PIL import Image
from test_browser import chromium_page

from brainseg.inference.geometry import Geometry
from brainseg.views import mesh, report
from brainseg.views.planes import PLANES, PlaneGeometry, explained_by_overlays

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[1]
SUBJECT = EXTERNAL_DIR / BRATS_SUBJECT  # the server fixture skips without it
ARTIFACTS = REPO / "artifacts"
SCREENS = ARTIFACTS / "screenshots"
RUN_TIMEOUT_MS = 1_800_000  # 155 slices on 2 busy cores
VOLUME = re.compile(r"Tumor volume: ([\d.]+) mL")
DICE = re.compile(r"3D Dice ([\d.]+)")
POINT = re.compile(r"Slice (\d+) of \d+.*? row (\d+) · column (\d+)")
IMAGES = {"axial": "#volume-overlay", "coronal": "#volume-coronal", "sagittal": "#volume-sagittal"}
SLIDERS = {"axial": "#volume-position", "coronal": "#volume-coronal-position", "sagittal": "#volume-sagittal-position"}


@pytest.fixture(scope="module")
def server(brats_subject: Path) -> DemoServer:
    log = Path(tempfile.mkdtemp(prefix="brainseg-views-")) / "app.log"
    with DemoServer.start(log, "--model", "unet") as server:  # a fixed bundled model, not the moving default
        yield server


def shoot(page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"volume_views_{name}.png"))


def plane_pixels(page, plane: str) -> np.ndarray:
    """The PNG the page shows for ``plane``, as served (exact pixels, not a screenshot)."""
    src = page.locator(f"{IMAGES[plane]} img").first.get_attribute("src")
    with Image.open(io.BytesIO(page.request.get(src).body())) as image:
        return np.asarray(image.convert("RGB"))


def point_of(page) -> tuple[int, int, int]:
    return tuple(int(page.locator(f"{SLIDERS[p]} input[type=number]").input_value()) - 1 for p in PLANES)


def wait_changed(page, selector: str, old: str) -> str:
    page.wait_for_function("([s, old]) => { const n = document.querySelector(s); return n && n.innerText !== old; }",
                           arg=[selector, old])
    return page.locator(selector).inner_text()


def test_three_linked_grayscale_planes_3d_view_and_report(server: DemoServer, tmp_path: Path) -> None:
    flair = SUBJECT / "Flair_subtrMeanDivStd.nii.gz"
    image = nib.load(str(flair))
    geometry = Geometry(tuple(image.shape), image.affine)
    planes = PlaneGeometry.of(geometry.to_presented(np.zeros(image.shape, bool)).shape, geometry.presented_spacing)
    timings: dict[str, float] = {}
    meshes: list[str] = []
    with chromium_page(webgl=True) as page:
        page.set_viewport_size({"width": 1400, "height": 900})
        page.on("response", lambda response: meshes.append(response.url) if ".glb" in response.url else None)
        page.goto(server.url)
        page.get_by_role("tab", name="Volume").click()
        assert page.locator("#volume-views").count() == 0 or not page.locator("#volume-views").is_visible(), \
            "no planes or scrubbers before a run"
        page.get_by_text("More channels and ground truth").click()
        page.locator("#volume-flair input[type=file]").set_input_files(str(flair))
        page.locator("#volume-t1ce input[type=file]").set_input_files(str(SUBJECT / "T1c_subtrMeanDivStd.nii.gz"))
        page.locator("#volume-truth input[type=file]").set_input_files(str(SUBJECT / "OTMultiClass.nii.gz"))
        page.locator("#volume-flair [data-testid=download-link]").wait_for()
        shoot(page, "0_before_run")
        page.locator("#volume-run").click()
        page.wait_for_function("p => new RegExp(p).test(document.querySelector('#volume-card').innerText)",
                               arg=VOLUME.pattern, timeout=RUN_TIMEOUT_MS)
        for plane in PLANES:
            page.locator(f"{IMAGES[plane]} img").first.wait_for(state="visible")
        card = page.locator("#volume-card").inner_text()
        volume_ml = float(VOLUME.search(card).group(1))
        shoot(page, "1_result")

        # the page moves to the result: the card and the three planes on one screen of a 1400 x 900 window
        page.wait_for_function("() => { const top = document.querySelector('#volume-card').getBoundingClientRect().top;"
                               " return top >= 0 && top < 30; }")
        for selector in ("#volume-card", *(f"{s} img" for s in IMAGES.values())):
            box = page.locator(selector).first.bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 900, f"{selector} needs scrolling: {box}"
        # grayscale outside the fixed-colour overlays (the old RGB composite made the brain olive and T1c blue)
        for plane in PLANES:
            rgb = plane_pixels(page, plane)
            assert rgb.shape[:2] == planes.size(plane)
            assert explained_by_overlays(rgb).all(), f"false colour on the {plane} plane"
            assert (rgb[..., 0] == rgb[..., 2]).mean() > 0.8

        # a click on the axial plane: the coronal and sagittal planes cross at that voxel
        axial = page.locator("#volume-overlay img").first
        box = axial.bounding_box()
        natural = axial.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        fx, fy = 0.62, 0.41
        before, caption = point_of(page), page.locator("#volume-caption").inner_text()
        started = time.perf_counter()
        axial.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
        clicked = wait_changed(page, "#volume-caption", caption)
        timings["click_s"] = time.perf_counter() - started
        # the pixel under the cursor: the image is drawn contained (letterboxed) in its element's box
        scale = max(natural[0] / box["width"], natural[1] / box["height"])
        x_px = (fx * box["width"] - (box["width"] - natural[0] / scale) / 2) * scale
        y_px = (fy * box["height"] - (box["height"] - natural[1] / scale) / 2) * scale
        expected = planes.to_voxel("axial", x_px, y_px, before)
        assert POINT.search(clicked), f"the caption names the clicked point: {clicked!r}"
        deadline = time.perf_counter() + 30  # the scrubbers move to the clicked voxel
        while point_of(page) == before and time.perf_counter() < deadline:
            page.wait_for_timeout(200)
        point = point_of(page)
        # the same slice; row and column within one voxel (the browser rounds the click to whole pixels)
        assert point[0] == expected[0] and np.abs(np.subtract(point, expected)).max() <= 1, (point, expected)
        for plane in ("coronal", "sagittal"):
            x, y = planes.to_pixel(plane, point)
            rgb = plane_pixels(page, plane)
            green = (rgb == (0, 214, 80)).all(axis=-1)
            assert green[:, x].sum() > rgb.shape[0] // 2 and green[y, :].sum() > rgb.shape[1] // 2, plane
        shoot(page, "2_clicked")

        # the 3D view and the report, through the same server's API (headless Chromium here draws no WebGL, so the
        # browser never fetches the .glb: the files are checked as /segment_volume returns them)
        from gradio_client import Client, handle_file
        from pypdf import PdfReader

        threshold_now = float(page.locator("#volume-threshold input[type=number]").input_value())
        outputs = Client(server.url, verbose=False).predict(
            handle_file(str(flair)), None, handle_file(str(SUBJECT / "T1c_subtrMeanDivStd.nii.gz")), threshold_now,
            api_name="/segment_volume")
        api_ml = float(json.loads(Path(outputs[1]).read_text())["volume_ml"]) if isinstance(outputs[1], str) and \
            Path(outputs[1]).is_file() else float(outputs[1]["volume_ml"])
        assert api_ml == pytest.approx(volume_ml, abs=0.01), "the API and the page give the same volume"
        loaded = mesh.load_meshes(Path(outputs[14]))
        assert mesh.mesh_volume_ml(loaded["prediction"]) == pytest.approx(volume_ml, rel=0.02)
        assert "head" in loaded
        pages = PdfReader(str(outputs[15])).pages
        assert len(pages) == len(report.SECTIONS)
        assert f"{volume_ml:.2f} mL" in pages[0].extract_text()

        # a threshold move redraws the card and the planes without a model run
        threshold = page.locator("#volume-threshold input[type=number]")
        threshold.fill("0.6")
        started = time.perf_counter()
        threshold.blur()
        stricter = wait_changed(page, "#volume-card", card)
        timings["threshold_release_s"] = time.perf_counter() - started
        assert float(VOLUME.search(stricter).group(1)) <= volume_ml
        # the files follow in a chained step: the old ones are gone at once, the new 3D view and report come after
        page.locator("#volume-report-pdf [data-testid=download-link]").first.wait_for()
        timings["threshold_files_s"] = time.perf_counter() - started
        page.locator("#volume-card").scroll_into_view_if_needed()
        shoot(page, "4_threshold")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps({k: round(v, 3) for k, v in timings.items()}, indent=2))
