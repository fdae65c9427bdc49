"""The Volume tab in a real browser: Playwright drives Debian Chromium (headless) against app.py: upload a
NIfTI built at run time from a held-out LGG patient, watch the progress, scrub the slices, move the
threshold, download the mask. Screenshots go to ``screenshots/`` (git-ignored)."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from demo_server import DemoServer, demo_server
from test_browser import SCREENSHOTS, TIMEOUT_MS, chromium_page
from volume_synth import affine_of, lgg_patient, ras_from_presented, save_nifti

from brainseg import ModelConfig
from brainseg.io.hub import BUNDLED_MODEL_DIR

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
PATIENT = "TCGA_HT_8114_19981030"  # 22 slices, a large tumor
SPACING = (0.9, 0.9, 2.5)
VOLUME = re.compile(r"Tumor volume: ([\d.]+) mL")
CAPTION = re.compile(r"Slice (\d+) of (\d+)")
THRESHOLD = f"{ModelConfig.load(BUNDLED_MODEL_DIR).threshold:g}"  # the default's tuned threshold (the server's model)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> DemoServer:
    return demo_server(request)


@pytest.fixture(scope="module")
def flair(lgg_test_dir: Path, tmp_path_factory) -> Path:
    images, _ = lgg_patient(lgg_test_dir, PATIENT)
    folder = tmp_path_factory.mktemp("browser-volume")
    return save_nifti(ras_from_presented(images[..., 1]), affine_of(np.diag(SPACING)), folder / "flair.nii.gz",
                      np.int16)


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_for_text(page, selector: str, pattern: str, old: str | None = None) -> str:
    """Wait until ``selector``'s text matches ``pattern`` (and differs from ``old``); return it."""
    page.wait_for_function(
        """([selector, pattern, old]) => {
            const node = document.querySelector(selector);
            return node && new RegExp(pattern).test(node.innerText) && (old === null || node.innerText !== old);
        }""",
        arg=[selector, pattern, old], timeout=TIMEOUT_MS)
    return text_of(page, selector)


def overlay_src(page) -> str:
    image = page.locator("#volume-overlay img").first
    image.wait_for(state="visible")
    return image.get_attribute("src")


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"browser_volume_{name}.png"), full_page=True)


def test_volume_tab_upload_progress_scrub_threshold_and_download(server: DemoServer, flair: Path,
                                                                  tmp_path: Path) -> None:
    with chromium_page() as page:
        page.goto(server.url)
        page.get_by_role("tab", name="Volume").click()
        assert page.locator("#volume-threshold input[type=number]").input_value() == THRESHOLD, "tuned value"
        page.locator("#volume-flair input[type=file]").set_input_files(str(flair))
        page.locator("#volume-flair [data-testid=download-link][download='flair.nii.gz']").wait_for()  # uploaded
        # A 22-slice scan can finish between two polls on a fast machine: record whether the progress text was
        # ever in the page instead of racing it.
        page.evaluate("""() => { window.sawProgress = false; new MutationObserver(() => {
            if (document.body.textContent.includes('Segmenting slices')) { window.sawProgress = true; }
        }).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
        page.locator("#volume-run").click()
        shoot(page, "1_progress")
        summary = wait_for_text(page, "#volume-summary", VOLUME.pattern)
        assert page.evaluate("window.sawProgress"), "the run showed its progress ('Segmenting slices ...')"
        volume_ml = float(VOLUME.search(summary).group(1))
        assert volume_ml > 0
        caption = text_of(page, "#volume-caption")
        shown, count = (int(v) for v in CAPTION.search(caption).groups())
        assert count == 22 and 1 <= shown <= 22
        page.locator("#volume-plot img").first.wait_for(state="visible")  # the area plot
        shoot(page, "2_segmented")

        # scrub: one slice up with the keyboard; the view and caption follow (no model run)
        before = overlay_src(page)
        slider = page.locator("#volume-position input[type=range]")
        slider.focus()
        page.keyboard.press("ArrowLeft" if shown == 22 else "ArrowRight")
        expected = shown - 1 if shown == 22 else shown + 1
        assert page.locator("#volume-position input[type=number]").input_value() == str(expected)
        wait_for_text(page, "#volume-caption", rf"Slice {expected} of 22")
        page.wait_for_function("old => document.querySelector('#volume-overlay img').src !== old", arg=before)
        shoot(page, "3_scrubbed")

        # the threshold: a release redraws everything from the stored probabilities
        threshold = page.locator("#volume-threshold input[type=number]")
        threshold.fill("0.9")
        threshold.blur()  # the number box's blur is the slider's release
        stricter = wait_for_text(page, "#volume-summary", r"at threshold 0\.9\b", old=summary)
        assert float(VOLUME.search(stricter).group(1)) <= volume_ml
        seconds = re.compile(r"run in ([\d.]+) s")
        assert seconds.search(stricter).group(1) == seconds.search(summary).group(1), "no model re-run"
        threshold.fill(THRESHOLD)  # back to the start: the download below must match the first summary's volume
        threshold.blur()
        summary = wait_for_text(page, "#volume-summary", rf"at threshold {re.escape(THRESHOLD)}\b", old=stricter)

        # download the NIfTI mask: the input's grid, as many voxels as the summary says
        link = page.locator("#volume-mask [data-testid=download-link][download='flair_mask.nii.gz']")
        with page.expect_download() as download_info:
            link.click()
        target = tmp_path / download_info.value.suggested_filename
        download_info.value.save_as(target)
        mask, source = nib.load(str(target)), nib.load(str(flair))
        assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
        voxels = int(np.asarray(mask.dataobj).sum())
        assert round(voxels * float(np.prod(SPACING)) / 1000, 2) == pytest.approx(volume_ml, abs=0.006)
        assert page.locator("#volume-gif [data-testid=download-link][download='flair_overlay.gif']").count() == 1
        shoot(page, "4_downloaded")
