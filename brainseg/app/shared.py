"""What the slice and Volume tabs share: the threshold slider and its help lines, how long a session's state lives,
and the steps both tabs take the same way (a model switch, a ground-truth upload, a redraw before any run)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gradio as gr

from brainseg.config import ModelConfig

THRESHOLD_MIN, THRESHOLD_MAX, THRESHOLD_STEP = 0.05, 0.95, 0.01
STATE_TTL_S = 3600
SLICE_REDRAW = "redraws in the browser while you drag, without re-running the model."
VOLUME_REDRAW = "moving it redraws without re-running the model."

Outputs = TypeVar("Outputs", bound=tuple)
Read = TypeVar("Read")


def threshold_info(threshold: float, redraw: str = SLICE_REDRAW) -> str:
    """The threshold slider's help line for a model tuned at ``threshold``."""
    return f"Starts at the model's tuned value {threshold:g}; {redraw}"


def normalize_info(trained_with: bool) -> str:
    """The normalization checkbox's help line for a model trained with it on or off."""
    return (f"The loaded weights were trained with it {'ON' if trained_with else 'OFF'}; "
            "flipping it re-runs the model (off = raw [0, 1] input).")


def slider_steps(minimum: float = THRESHOLD_MIN, maximum: float = THRESHOLD_MAX,
                 step: float = THRESHOLD_STEP) -> tuple[float, ...]:
    """Every value the threshold slider can take, as the floats the browser sends (0.37, not 0.37000000000000005)."""
    return tuple(round(minimum + i * step, 10) for i in range(round((maximum - minimum) / step) + 1))


def threshold_slider(threshold: float, elem_id: str, redraw: str) -> gr.Slider:
    """A tab's threshold slider, starting at the model's tuned ``threshold``."""
    return gr.Slider(THRESHOLD_MIN, THRESHOLD_MAX, value=threshold, step=THRESHOLD_STEP, label="Threshold",
                     elem_id=elem_id, info=threshold_info(threshold, redraw))


def tuned_threshold(config: ModelConfig, redraw: str) -> gr.Slider:
    """A model switch: the threshold slider moves to the new model's tuned value, its help line with it."""
    return gr.Slider(value=config.threshold, info=threshold_info(config.threshold, redraw))


def unchanged(kind: type[Outputs]) -> Outputs:
    """Every output of ``kind`` (a NamedTuple of outputs) left as it is, e.g. before a tab's first run."""
    return kind(*(gr.skip() for _ in kind._fields))


def read_upload(read: Callable[..., Read], *args: Any, errors: type[Exception] | tuple[type[Exception], ...],
                message: Callable[[Exception], str] = str) -> Read:
    """``read(*args)`` (an uploaded file's reader); its ``errors`` reach the user as a one-line ``gr.Error``."""
    try:
        return read(*args)
    except errors as exc:
        raise gr.Error(message(exc)) from None


def on_truth_change(truth_file: gr.File, handler: Callable, inputs: Sequence, outputs: Sequence,
                    **options: Any) -> Any:
    """A ground truth was uploaded or removed: ``handler`` rescores and redraws (no model run)."""
    return gr.on([truth_file.upload, truth_file.clear], handler, list(inputs), list(outputs),
                 api_visibility="private", **options)


def on_model_switch(model_choice: gr.Dropdown, choose: Callable, choose_outputs: Sequence, rerun: Callable,
                    rerun_inputs: Sequence, rerun_outputs: Sequence, choose_options: dict[str, Any] | None = None,
                    **rerun_options: Any) -> Any:
    """Another model was chosen: ``choose`` loads it and sets what depends on it (its tuned threshold, ...),
    then ``rerun`` runs the tab's current input with it."""
    return model_choice.input(choose, model_choice, list(choose_outputs), api_visibility="private",
                              **(choose_options or {})).then(
        rerun, list(rerun_inputs), list(rerun_outputs), api_visibility="private", **rerun_options)
