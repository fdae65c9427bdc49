"""The Volume tab's handlers and outputs: the model runs once per upload (``segment_volume``); the planes, the
threshold, a ground truth, the 3D view and the report only redraw from the stored probabilities."""
from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from brainseg.app.models import ModelRegistry
from brainseg.app.shared import VOLUME_REDRAW, read_upload, tuned_threshold, unchanged
from brainseg.evaluation.metrics import dice_score
from brainseg.inference.quality import flags_markdown
from brainseg.inference.volume import predict_volume, save_mask
from brainseg.io.slices import save_png
from brainseg.io.volumes import VolumeError, load_volume, subject_name
from brainseg.views import volume_export
from brainseg.views.report import ResultCard
from brainseg.views.volume_view import VolumeSession


class SliceView(NamedTuple):
    """What moving the point (a scrubber, a click on a plane) or a threshold drag redraws: the three planes
    through the point, the axial slice's probability map and the caption."""

    position: Any  # the axial scrubber (1-based presented slice, inferior -> superior)
    overlay: Any  # the axial plane: grayscale, prediction red, ground truth blue, band amber, cross-hair green
    probability: Any  # the axial slice's probability map
    caption: Any  # Markdown: the point, its slice's tumor area and Dice
    coronal_position: Any  # 1-based presented row (anterior -> posterior)
    sagittal_position: Any  # 1-based presented column (patient's right -> left)
    coronal: Any
    sagittal: Any


class VolumeOutputs(NamedTuple):
    """Everything the Volume tab shows. The field order is the order of the ``/segment_volume`` outputs
    (``state`` is the session's, not part of the API); the fields after it were appended later."""

    mask_file: Any  # NIfTI mask, uint8 0/1, the input's shape and affine
    numbers: Any  # JSON: volume_ml, slices_with_tumor, ... and with ground truth dice, per_slice_dice
    gif_file: Any  # animated GIF of the overlays, inferior -> superior
    area_plot: Any  # tumor area per slice (matplotlib)
    position: Any  # the axial scrubber (1-based presented slice)
    overlay: Any  # the axial plane
    probability: Any
    caption: Any
    summary: Any  # Markdown
    state: Any  # VolumeSession
    card: Any  # Markdown: the result card (volume and its range, side, extent, Dice / HD95, model, scan check)
    coronal_position: Any
    sagittal_position: Any
    coronal: Any
    sagittal: Any
    mesh: Any  # .glb: tumor surface (red), ground truth (blue), translucent head
    report_pdf: Any  # the report: card, three-plane montage, area plot
    report_json: Any  # the card and the numbers

    def view(self) -> SliceView:
        return SliceView(*(getattr(self, name) for name in SliceView._fields))

    def files(self) -> VolumeFiles:
        return VolumeFiles(*(getattr(self, name) for name in VolumeFiles._fields))


class VolumeFiles(NamedTuple):
    """The slow part of a redraw, written in a step chained after the card and the planes: the downloads and
    the 3D view."""

    mask_file: Any
    gif_file: Any
    mesh: Any
    report_pdf: Any
    report_json: Any

    @classmethod
    def cleared(cls) -> VolumeFiles:
        """Nothing to download while the files of a new threshold are written (no stale file stays)."""
        return cls(*(None for _ in cls._fields))


def _safe_stem(name: str) -> str:
    """A file-name stem from a volume's name (``Flair.nii.gz`` -> ``Flair``)."""
    return re.sub(r"[^\w.-]+", "_", subject_name(name)).strip("._") or "volume"


UPLOAD_FOLDER = re.compile(r"(?:/[^\s/'\"]+)*/gradio/[0-9a-f]{16,}/")


def user_message(exc: Exception, *files: str | None) -> str:
    """An error's message naming the user's files, never the server's upload folders."""
    text = str(exc)
    for file in filter(None, files):
        text = text.replace(str(Path(file).parent) + "/", "").replace(str(Path(file).parent), "the upload")
    return UPLOAD_FOLDER.sub("", text)


SKIPPED_SCRUBBERS = {name: gr.skip() for name in ("position", "coronal_position", "sagittal_position")}


def _slider(count: int, value: int, label: str) -> Any:
    return gr.Slider(minimum=1, maximum=max(count, 2), value=value + 1, step=1, interactive=True,
                     label=f"{label} (1-{count})")


@dataclass(frozen=True)
class VolumeHandlers:
    """The Volume tab's handlers: the model runs once per upload (``segment_volume``); the planes, the threshold,
    a ground truth, the 3D view and the report only redraw from the stored probabilities."""

    models: ModelRegistry
    cache_dir: str  # Gradio's cache: files are written straight into it

    def png(self, array: np.ndarray, name: str) -> str:
        return save_png(array, self.cache_dir, name)

    def segment_volume(self, flair_file: str | None, t1_file: str | None, t1ce_file: str | None, threshold: float,
                       truth_file: str | None = None, model: str | None = None,
                       progress: gr.Progress = gr.Progress()) -> VolumeOutputs:
        """Segment every axial slice of a FLAIR volume (+ optional T1 / post-contrast T1 on its grid) with ``model``
        (a selector choice; None: the model the app was started with); returns the
        NIfTI mask (input shape and affine), the numbers (``volume_ml``, ...; with a ground-truth NIfTI the 3D
        and per-slice Dice), the overlay GIF, the area plot and the views through the tumor's centre, then the
        result card, the coronal and sagittal planes, the 3D view and the report (PDF, JSON)."""
        if not flair_file:
            raise gr.Error("Upload a FLAIR volume first (NIfTI .nii / .nii.gz, or a .zip of one DICOM series).")
        started = time.perf_counter()

        def slices_done(done: int, total: int) -> None:
            progress((done, total), desc="Segmenting slices", unit="slices")

        try:
            progress(0, desc="Reading the volume")
            flair = load_volume(flair_file)
            t1 = load_volume(t1_file) if t1_file else None
            t1ce = load_volume(t1ce_file) if t1ce_file else None
            prediction = predict_volume(self.models.get(model), flair, t1, t1ce, progress=slices_done)
            del t1, t1ce
            truth = volume_export.read_truth(prediction, truth_file) if truth_file else None
        except VolumeError as exc:
            raise gr.Error(user_message(exc, flair_file, t1_file, t1ce_file, truth_file)) from None
        except MemoryError:
            raise gr.Error("This volume does not fit in the server's memory: crop or downsample it first.") from None
        if prediction.slices_run == 0:
            raise gr.Error(f"{prediction.name}: no slice holds any signal (the volume is constant): "
                           "nothing to segment. Check that this is the FLAIR image.")
        progress(1.0, desc="Writing the mask, the 3D view and the report")
        for note in prediction.notes:
            gr.Warning(note)
        session = VolumeSession.create(prediction, 0.0, truth, flair.data)
        return self.volume_outputs(session, threshold, started=started)

    def choose_model(self, model: str | None) -> tuple[Any, Any, Any]:
        """Another model was chosen: the threshold slider moves to its tuned value and the old numbers go."""
        waiting = f"Re-running with **{model}** …"
        return tuned_threshold(self.models.get(model).config, VOLUME_REDRAW), waiting, waiting

    def rerun(self, state: VolumeSession | None, flair_file: str | None, t1_file: str | None, t1ce_file: str | None,
              threshold: float, truth_file: str | None, model: str | None,
              progress: gr.Progress = gr.Progress()) -> VolumeOutputs:
        """Re-run the shown volume with the newly chosen model (nothing to do before a first run)."""
        if state is None or not flair_file:
            return unchanged(VolumeOutputs)
        return self.segment_volume(flair_file, t1_file, t1ce_file, threshold, truth_file, model, progress)

    def numbers(self, state: VolumeSession, threshold: float) -> dict:
        score = volume_export.score_truth(state.prediction, state.truth, threshold)
        return volume_export.volume_numbers(state.prediction, threshold, state.seconds, score)

    def downloads(self, state: VolumeSession, threshold: float) -> tuple[Path, Path, Path]:
        """The NIfTI mask, the overlay GIF and the 3D view at ``threshold``, in a new folder of Gradio's cache;
        and the stem for the report files."""
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        stem = Path(tempfile.mkdtemp(prefix="volume-", dir=self.cache_dir)) / _safe_stem(state.prediction.name)
        mask_path = save_mask(state.prediction, f"{stem}_mask.nii.gz", threshold)[0]
        gif_path = volume_export.save_overlay_gif(state.prediction, f"{stem}_overlay.gif", threshold,
                                                  state.shown_truth)
        return Path(mask_path), Path(gif_path), stem

    def caption(self, state: VolumeSession, point: tuple[int, int, int], threshold: float) -> str:
        """The point: its slice, row and column, the input voxel, its slice's tumor area and Dice ("—" when empty)."""
        prediction, (z, r, c) = state.prediction, point
        geometry = prediction.geometry
        area = int(state.mask(threshold)[z].sum())
        text = (f"**Slice {z + 1} of {prediction.n_slices}** (index {geometry.input_slice_index(z)} along input "
                f"axis {geometry.slice_axis}) · row {r + 1} · column {c + 1} · probability "
                f"{prediction.proba[z, r, c]:.2f} · slice tumor {area:,} voxels "
                f"({area * volume_export.slice_area_mm2(prediction) / 100:.2f} cm²)")
        if state.shown_truth is not None:
            truth = state.shown_truth[z]
            both_empty = not truth.any() and not area
            dice = "—" if both_empty else f"{dice_score(state.mask(threshold)[z], truth):.3f}"
            text += f" · ground truth {int(truth.sum()):,} voxels · slice Dice {dice}"
        return text

    def slice_view(self, state: VolumeSession, point: tuple[int, int, int], threshold: float,
                   sequence: str = "FLAIR", band: bool = True) -> SliceView:
        """The three planes through ``point`` (presented z, r, c) at ``threshold`` (no model run)."""
        point = state.geometry.clamp(point)
        planes = state.planes(point, threshold, sequence, band)
        z, r, c = point
        return SliceView(position=z + 1, coronal_position=r + 1, sagittal_position=c + 1,
                         overlay=self.png(planes["axial"], "volume_axial"),
                         coronal=self.png(planes["coronal"], "volume_coronal"),
                         sagittal=self.png(planes["sagittal"], "volume_sagittal"),
                         probability=self.png(volume_export.probability_frame(state.prediction, z),
                                              "volume_probability"),
                         caption=self.caption(state, point, threshold))

    def summary(self, numbers: dict) -> str:
        volume = (f"**Tumor volume: {numbers['volume_ml']:.2f} mL**" if numbers["volume_ml"] is not None
                  else f"**Tumor: {numbers['tumor_voxels']:,} voxels**")
        text = (f"{volume} ({numbers['tumor_voxels']:,} voxels) in {numbers['slices_with_tumor']} of "
                f"{numbers['n_slices']} slices at threshold {numbers['threshold']:g}  \n"
                f"{numbers['slices_run']} slices with head were run in {numbers['seconds']:.1f} s; channels "
                f"(pre-contrast, FLAIR, post-contrast inputs): {', '.join(numbers['channels'])}; intensity rule: "
                f"{numbers.get('intensity', 'percentile')}")
        if "dice" in numbers:
            text += (f"  \n**Against ground truth** ({numbers.get('truth_volume_ml') or 0:.2f} mL): "
                     f"3D Dice {numbers['dice']:.3f}")
        return text + "".join(f"\n\n**Note:** {note}" for note in numbers["notes"])

    def redraw(self, state: VolumeSession, threshold: float,
               point: tuple[int, int, int] | None = None) -> tuple[VolumeOutputs, ResultCard, dict]:
        """The card, the numbers, the area plot and the planes at ``threshold``, the files cleared (see
        :meth:`files`); the planes move to ``point`` (None: the tumor's centre, sliders reset)."""
        prediction = state.prediction
        moved = point is None
        point = state.start_point(threshold) if point is None else state.geometry.clamp(point)
        numbers, card = self.numbers(state, threshold), state.card(threshold)
        view = self.slice_view(state, point, threshold)
        if moved:
            count_z, count_r, count_c = prediction.proba.shape
            view = view._replace(position=_slider(count_z, point[0], "Axial slice, inferior → superior"),
                                 coronal_position=_slider(count_r, point[1], "Coronal, anterior → posterior"),
                                 sagittal_position=_slider(count_c, point[2], "Sagittal, right → left"))
        outputs = VolumeOutputs(
            numbers=numbers, area_plot=volume_export.area_plot(prediction, threshold, state.shown_truth, point[0]),
            summary=self.summary(numbers), state=state, card=card.markdown() + "\n\n" + flags_markdown(card.flags),
            **VolumeFiles.cleared()._asdict(), **view._asdict())
        return outputs, card, numbers

    def write_files(self, state: VolumeSession, threshold: float, card: ResultCard | None = None,
                    numbers: dict | None = None, scene: bool = True) -> VolumeFiles:
        """The NIfTI mask, the overlay GIF, the report and (``scene``) the 3D view at ``threshold`` (no model run)."""
        mask_path, gif_path, stem = self.downloads(state, threshold)
        card = state.card(threshold) if card is None else card
        numbers = self.numbers(state, threshold) if numbers is None else numbers
        pdf, json_path = state.save_report(card, numbers, threshold, stem)
        mesh = str(state.save_scene(threshold, f"{stem}_3d.glb")) if scene else gr.skip()
        return VolumeFiles(mask_file=str(mask_path), gif_file=str(gif_path), report_pdf=str(pdf),
                           report_json=str(json_path), mesh=mesh)

    def scene(self, state: VolumeSession | None, threshold: float) -> Any:
        """The first step chained after a threshold release or a new ground truth: the 3D view at ``threshold``."""
        if state is None:
            return gr.skip()
        folder = Path(tempfile.mkdtemp(prefix="volume-3d-", dir=self.cache_dir))
        return str(state.save_scene(threshold, folder / f"{_safe_stem(state.prediction.name)}_3d.glb"))

    def files(self, state: VolumeSession | None, threshold: float) -> VolumeFiles:
        """The step chained after :meth:`scene`: the downloads at ``threshold`` (the 3D view is left as it is)."""
        if state is None:
            return unchanged(VolumeFiles)
        return self.write_files(state, threshold, scene=False)

    def volume_outputs(self, state: VolumeSession, threshold: float, point: tuple[int, int, int] | None = None,
                       started: float | None = None) -> VolumeOutputs:
        """Every output at ``threshold``, files included (the API's answer); the planes move to ``point``
        (None: the tumor's centre). With ``started`` (a new run's :func:`time.perf_counter` start) the state
        gets the seconds from the start to the redraw (reading, the model run, the mask)."""
        if started is not None:
            state = state.with_seconds(time.perf_counter() - started)
        outputs, card, numbers = self.redraw(state, threshold, point)
        return outputs._replace(**self.write_files(state, threshold, card, numbers)._asdict())

    def move(self, state: VolumeSession | None, position: float, coronal: float, sagittal: float, threshold: float,
             sequence: str = "FLAIR", band: bool = True) -> SliceView:
        """Show the planes through the scrubbers' point, or the same point at another threshold (no model run)."""
        if state is None:
            return unchanged(SliceView)
        return self.slice_view(state, (int(position) - 1, int(coronal) - 1, int(sagittal) - 1), threshold,
                               sequence, band)

    def click(self, plane: str, state: VolumeSession | None, point: tuple[float, float, float], threshold: float,
              sequence: str, band: bool, event: gr.SelectData) -> SliceView:
        """A click on ``plane`` at px (x, y): the other two planes move through that voxel."""
        if state is None or not event.index:
            return unchanged(SliceView)
        x, y = event.index[:2]
        current = tuple(int(v) - 1 for v in point)
        return self.slice_view(state, state.geometry.to_voxel(plane, x, y, current), threshold, sequence, band)

    def click_axial(self, state, position, coronal, sagittal, threshold, sequence, band,
                    event: gr.SelectData) -> SliceView:
        return self.click("axial", state, (position, coronal, sagittal), threshold, sequence, band, event)

    def click_coronal(self, state, position, coronal, sagittal, threshold, sequence, band,
                      event: gr.SelectData) -> SliceView:
        return self.click("coronal", state, (position, coronal, sagittal), threshold, sequence, band, event)

    def click_sagittal(self, state, position, coronal, sagittal, threshold, sequence, band,
                       event: gr.SelectData) -> SliceView:
        return self.click("sagittal", state, (position, coronal, sagittal), threshold, sequence, band, event)

    def scrubbed_point(self, state: VolumeSession, threshold: float, position: float, coronal: float,
                       sagittal: float) -> tuple[int, int, int]:
        """The scrubbers' point (0-based); a coronal or sagittal scrubber left at 0 takes the tumor centre's."""
        centre = state.start_point(threshold)
        return (int(position) - 1, int(coronal) - 1 if coronal else centre[1],
                int(sagittal) - 1 if sagittal else centre[2])

    def rethreshold(self, state: VolumeSession | None, threshold: float, position: float = 1, coronal: float = 0,
                    sagittal: float = 0) -> VolumeOutputs:
        """``/volume_threshold``: every output at a new threshold, files included (no model run); the planes stay
        at the scrubbers' point (the axial one alone through the API: the others keep the tumor centre's)."""
        if state is None:
            return unchanged(VolumeOutputs)
        point = self.scrubbed_point(state, threshold, position, coronal, sagittal)
        return self.volume_outputs(state, threshold, point)._replace(state=gr.skip(), **SKIPPED_SCRUBBERS)

    def rethreshold_view(self, state: VolumeSession | None, threshold: float, position: float = 1,
                         coronal: float = 0, sagittal: float = 0) -> VolumeOutputs:
        """The page's threshold release: the card, the numbers, the plot and the planes at once; the files are
        cleared here and written by the chained :meth:`files`."""
        if state is None:
            return unchanged(VolumeOutputs)
        point = self.scrubbed_point(state, threshold, position, coronal, sagittal)
        return self.redraw(state, threshold, point)[0]._replace(state=gr.skip(), **SKIPPED_SCRUBBERS)

    def change_truth(self, state: VolumeSession | None, truth_file: str | None, position: float,
                     threshold: float, coronal: float = 0, sagittal: float = 0) -> VolumeOutputs:
        """A ground-truth NIfTI was uploaded or removed: score and redraw without running the model."""
        if state is None:
            return unchanged(VolumeOutputs)
        truth = read_upload(volume_export.read_truth, state.prediction, truth_file, errors=VolumeError,
                            message=lambda exc: user_message(exc, truth_file)) if truth_file else None
        state = state.with_truth(truth)
        point = self.scrubbed_point(state, threshold, position, coronal, sagittal)
        return self.redraw(state, threshold, point)[0]._replace(**SKIPPED_SCRUBBERS)
