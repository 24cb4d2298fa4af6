"""A track's head pose (yaw, pitch, roll) and mouth opening over time, as a PNG (matplotlib, Agg).

Spans without a detected face (filled by interpolation or held) are shaded.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

from portrait.errors import PortraitError
from portrait.motion.landmarks import mouth_opening
from portrait.motion.track import Track


def plot_track(track: Track, path: str | Path, title: str | None = None, dpi: int = 100) -> Path:
    """Draw ``track`` to the PNG ``path`` (written atomically); returns ``path``.

    Raises:
        PortraitError: matplotlib is not installed.
    """
    try:
        figure_module = importlib.import_module("matplotlib.figure")
        agg = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as error:
        raise PortraitError("--plot needs matplotlib: pip install matplotlib") from error
    path = Path(path)
    figure = figure_module.Figure(figsize=(9, 5), dpi=dpi)
    agg.FigureCanvasAgg(figure)
    pose_axes, mouth_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    times = track.times
    for column, name in enumerate(("yaw", "pitch", "roll")):
        pose_axes.plot(times, track.poses[:, column], label=name, linewidth=1.2)
    pose_axes.set_ylabel("degrees")
    pose_axes.legend(loc="upper right", ncol=3, fontsize="small")
    pose_axes.grid(alpha=0.3)
    mouth_axes.plot(times, mouth_opening(track.landmarks), color="tab:red", linewidth=1.0)
    mouth_axes.set_ylabel("mouth opening")
    mouth_axes.set_xlabel("time (s)")
    mouth_axes.grid(alpha=0.3)
    for start, end, kind in track.gaps:
        for axes in (pose_axes, mouth_axes):
            axes.axvspan(start, end, color="grey" if kind == "held" else "khaki", alpha=0.3, linewidth=0)
    pose_axes.set_title(
        title or f"{Path(track.source).name or 'track'}: {len(times)} frames at {track.fps:g} fps"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
