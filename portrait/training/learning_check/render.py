"""The learning check's renders: a held-out driving path through the product's render path, measured.

For one driving clip (:class:`~portrait.testing.synthetic.dataset.ClipSpec` with a zigzag path the training
clips never use) the portrait is its first frame and the speech its audio; :func:`render_driving` renders it
twice through ``inputs.prepare`` + ``rendering.render_job`` with one seed, once with the motion maps drawn
from the driving landmarks (the trained landmark guider steers) and once without maps, and measures the face
in the dumped frames with :func:`portrait.testing.synthetic.face.face_trajectory`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from portrait.testing.synthetic.dataset import SAMPLE_RATE, ClipSpec, make_clip
from portrait.testing.synthetic.face import face_trajectory

logger = logging.getLogger(__name__)


def correlations(measured: np.ndarray, driving: np.ndarray) -> dict[str, float]:
    """Pearson correlation of x and of y between (N, 2) ``measured`` and ``driving`` trajectories.

    A coordinate that does not vary (or holds NaN) correlates 0: a face that stays put does not follow.
    """
    result = {}
    for axis, name in enumerate("xy"):
        a, b = measured[:, axis], driving[:, axis]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3 or a[ok].std() < 1e-9 or b[ok].std() < 1e-9:
            result[name] = 0.0
        else:
            result[name] = round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 4)
    return result


def best_lag(pairs: list[tuple[np.ndarray, np.ndarray]], max_lag: int = 3) -> int:
    """The shift (frames; > 0: the render behind the driving path) at which the x + y correlations of the
    ``(measured, driving)`` trajectory pairs, summed over the pairs, are highest."""

    def score(lag: int) -> float:
        total = 0.0
        for measured, driving in pairs:
            n = len(driving)
            a, b = (measured[lag:], driving[: n - lag]) if lag >= 0 else (measured[:lag], driving[-lag:])
            total += sum(correlations(a, b).values())
        return total

    return max(range(-max_lag, max_lag + 1), key=score)


def pooled(renders: list[dict]) -> dict:
    """The marks over every render at once: correlations of the trajectories centred each on its own mean
    and concatenated, and the best lag of the summed per-render correlations (less at the mercy of one
    short path than a per-render value)."""

    def traj(render: dict, name: str) -> np.ndarray:
        return np.asarray(render["trajectories"][name], dtype=np.float64)

    def joined(name: str) -> np.ndarray:
        return np.concatenate([traj(r, name) - np.nanmean(traj(r, name), axis=0) for r in renders])

    driving, pairs = joined("driving"), [(traj(r, "with_guider"), traj(r, "driving")) for r in renders]
    return {"with_guider": correlations(joined("with_guider"), driving),
            "without_guider": correlations(joined("without_guider"), driving),
            "best_lag": best_lag(pairs)}  # fmt: skip


def _to_working(points: np.ndarray, prepared: Any) -> np.ndarray:
    """(..., 2) photo pixels → pixels of the prepared job's working image (its crop, then the resize)."""
    crop = prepared.image.crop_box
    x0, y0, x1, y1 = crop if crop is not None else (0, 0, *prepared.photo.size)
    width, height = prepared.image.size
    return (points - np.array([x0, y0])) * np.array([width / (x1 - x0), height / (y1 - y0)])


def _dumped(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])


def render_driving(engine: Any, cfg: Any, spec: ClipSpec, frames: int, clip_size: int, folder: Path) -> dict:
    """Render ``spec``'s clip with and without its motion maps; trajectories and their correlations.

    Returns:
        ``{"clip", "with_guider": {"x", "y"}, "without_guider": {"x", "y"}, "best_lag", "trajectories":
        {"driving", "with_guider", "without_guider"} ((N, 2) lists, working pixels)}``.
    """
    import soundfile

    from portrait.inputs import Job, prepare
    from portrait.motion.maps import render_motion_maps
    from portrait.rendering import render_job

    clip = make_clip(spec, frames, clip_size)
    folder.mkdir(parents=True, exist_ok=True)
    image, audio = folder / "portrait.png", folder / "speech.wav"
    Image.fromarray(clip["frames"][0]).save(image)
    soundfile.write(audio, clip["samples"], SAMPLE_RATE)
    job = Job(image, audio, folder / "with_guider.mp4", emotion=spec.emotion, seed=0,
              dump_frames=folder / "with_guider")  # fmt: skip
    prepared = prepare(job, cfg, engine.detector, list(engine.bank))
    landmarks = _to_working(clip["landmarks"], prepared)
    maps = render_motion_maps(landmarks, prepared.image.size, draw_mouth=cfg.motion.mouth == "video")
    render_job(replace(prepared, motion_maps=maps), engine, cfg)
    plain = replace(job, output=folder / "without_guider.mp4", dump_frames=folder / "without_guider")
    render_job(replace(prepared, job=plain), engine, cfg)
    driving = landmarks[:, [0, 16]].mean(1)  # the face ellipse's centre
    result: dict[str, Any] = {"clip": spec.name, "trajectories": {"driving": driving.round(3).tolist()}}
    for name in ("with_guider", "without_guider"):
        measured = face_trajectory(_dumped(folder / name))
        result[name] = correlations(measured, driving)
        result["trajectories"][name] = measured.round(3).tolist()
        if name == "with_guider":
            result["best_lag"] = best_lag([(measured, driving)])
    return result
