"""The widgets of the pack's nodes on ComfyUI's V3 API (imported by ComfyUI only, with :mod:`.nodes`).

Every default is the CLI's (the packaged config's, through :class:`~portrait.comfy.render.RenderRequest`).
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from portrait.comfy.render import RenderRequest
from portrait.constants import MAX_EMOTION_STRENGTH

CATEGORY = "portrait"

_R = RenderRequest()


def node_schema(
    node_id: str, title: str, description: str, inputs: list, outputs: list, **extra: Any
) -> io.Schema:
    """A node of the pack's category (the V3 API's declarative schema)."""
    return io.Schema(
        node_id=node_id, display_name=title, category=CATEGORY, description=description, inputs=inputs,
        outputs=outputs, **extra,
    )  # fmt: skip


def fps_input(tooltip: str = "frame rate of the frames") -> io.Float.Input:
    return io.Float.Input("fps", default=25.0, min=0.1, max=240.0, step=0.1, tooltip=tooltip)


def _guidance_scale(name: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=30.0, step=0.1, tooltip=tooltip)


def guidance_inputs() -> list:
    """Portrait Render's emotion, guidance, steps and seed widgets (the CLI's defaults)."""
    return [
        io.String.Input(
            "emotion",
            default=_R.emotion,
            tooltip="NAME, NAME:INTENSITY, happy:0.6+surprised:0.4 or a timeline "
            "'0:neutral, 2.5:happy:0.8, 6:sad'",
        ),
        io.Float.Input(
            "intensity",
            default=1.0,
            min=0.0,
            max=MAX_EMOTION_STRENGTH,
            step=0.05,
            tooltip="intensity of a single emotion name",
        ),
        _guidance_scale("ref_scale", _R.ref_scale, "reference-image guidance"),
        _guidance_scale("emo_scale", _R.emo_scale, "audio+emotion guidance"),
        io.Int.Input("steps", default=_R.steps, min=1, max=1000),
        io.Int.Input("seed", default=_R.seed, min=0, max=2**63 - 1),
    ]


def framing_inputs() -> list:
    """Portrait Render's framing, face and emotion-QA widgets (the CLI's defaults)."""
    return [
        io.Combo.Input(
            "framing",
            options=["auto", "full", "photo", "crop"],
            default=_R.framing,
            tooltip="auto/full: animate the face crop and paste it back into the photo; "
            "photo: the resized photo; crop: a square crop around the face",
        ),
        io.Boolean.Input("interpolate", default=_R.interpolate, tooltip="RIFE: 25 fps instead of 12.5"),
        io.Int.Input(
            "size",
            default=_R.size,
            min=64,
            max=4096,
            step=64,
            tooltip="short side of the generated video",
        ),
        io.String.Input("face_box", default="", tooltip="X,Y,W,H in pixels (empty: detect the face)"),
        io.Int.Input("face_index", default=-1, min=-1, max=64, tooltip="which face, 0 = largest"),
        io.Boolean.Input(
            "emotion_qa",
            default=False,
            tooltip="re-render with stronger emotion guidance until the emotion is seen",
        ),
        io.Float.Input("qa_threshold", default=_R.qa_threshold, min=0.0, max=1.0, step=0.05),
        io.Int.Input("qa_retries", default=_R.qa_retries, min=0, max=3),
    ]
