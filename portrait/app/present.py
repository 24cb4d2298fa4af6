"""What the page shows: the face-box preview, the info panel, one-line messages, the public sidecar."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from portrait.boxes import Box, CropBox
from portrait.errors import (
    HINT_DLIB_DETECTOR,
    HINT_FACE_BOX,
    HINT_SHORTER_AUDIO,
    HINT_USE_CPU,
    describe,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Colours of the face box and of the crop box in the preview.
FACE_COLOUR, CROP_COLOUR = (0, 230, 64), (255, 160, 0)
#: Suffixes of an uploaded emotion prior (.safetensors / .npy) or timeline (.json / .yaml) file.
PREVIEW_SIDE = 768
#: CLI hints in library messages → what to do on the page.
#: The page's words for the library's hints (see portrait.errors).
UI_HINTS = {
    HINT_FACE_BOX: "enter the face position in Advanced → Face box",
    HINT_SHORTER_AUDIO: "trim it",
    HINT_USE_CPU: "the server has no GPU",
    HINT_DLIB_DETECTOR: "start the app with --detector dlib",
}
#: Per-attempt emotion-QA scores shown in the info panel.
_QA_PANEL_KEYS = ("emo_scale", "emotion_confidence", "emotion_accuracy", "csim", "passed")
#: Sidecar keys also shown in the info panel.
_PANEL_EXTRAS = ("face_box", "crop_box", "size", "full_frame", "interpolated", "device")
#: What the info panel shows of the sidecar's motion record.
_MOTION_PANEL_KEYS = ("source_kind", "mode", "gains", "mouth", "extend", "applied", "frames")


# ----------------------------------------------------------------------------------------- presentation
def draw_face_box(
    image: Image.Image,
    face_box: Box,
    crop_box: CropBox | None = None,
    max_side: int = PREVIEW_SIDE,
) -> Image.Image:
    """A copy of ``image`` (RGB) with the face box ``(x, y, w, h)`` in green and the crop ``(x1, y1, x2, y2)``
    in orange, downscaled to at most ``max_side`` pixels."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 160))
    x, y, w, h = (float(v) for v in face_box)
    draw.rectangle((x, y, x + w, y + h), outline=FACE_COLOUR, width=width)
    if crop_box is not None:
        draw.rectangle(tuple(float(v) for v in crop_box), outline=CROP_COLOUR, width=width)
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def summary(info: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The info panel: duration, frames, seconds taken, seed used (and what the render resolved)."""
    panel = {"duration_s": info["audio_seconds"], "frames": info["video_frames"], "fps": info["fps"]}
    panel |= {"seconds_taken": round(seconds, 2), "seed": info["seed"], "emotion": info["emotion"]}
    panel |= {key: info.get(key) for key in _PANEL_EXTRAS}
    if info.get("motion"):  # what the driving source did (the file's name only: it is a server path)
        record = info["motion"]
        panel["motion"] = {"source": Path(str(record.get("source", ""))).name}
        panel["motion"] |= {key: record[key] for key in _MOTION_PANEL_KEYS if key in record}
    qa = info.get("emotion_qa")
    if qa:  # each attempt's emotion confidence / CSIM and which one the video is
        attempts = [{key: attempt.get(key) for key in _QA_PANEL_KEYS} for attempt in qa["attempts"]]
        panel["emotion_qa"] = {
            "chosen": qa["chosen"],
            "passed": qa["passed"],
            "threshold": qa.get("threshold"),
            "attempts": attempts,
        }
    return panel


def ui_message(err: BaseException, paths: Mapping[str, str] = {}) -> str:  # noqa: B006 (read only)
    """One readable line for the page: the hint in the page's words, server paths by ``paths``' names."""
    text = describe(err, UI_HINTS)
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, paths[path])
    return text


def public_sidecar(sidecar: Path) -> Path:
    """A copy of ``sidecar`` fit to hand to a visitor: every absolute path reduced to its file name.

    Written next to it as ``<stem>.public.json``; the server's own sidecar is left as it is.
    """
    import json

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return Path(value).name if os.path.isabs(value) else value
        if isinstance(value, Mapping):
            return {key: scrub(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(item) for item in value]
        return value

    data = json.loads(sidecar.read_text(encoding="utf-8"))
    public = sidecar.with_name(sidecar.name.removesuffix(".json") + ".public.json")
    public.write_text(json.dumps(scrub(data), indent=2) + "\n", encoding="utf-8")
    return public
