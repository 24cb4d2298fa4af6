"""``report.html`` and its PNG plots for a list of :func:`~portrait.eval.evaluate.evaluate_video` results.

Per video: a short list of flagged problems (thresholds in :data:`FLAGS`), the metric table (value,
backend, reason when unavailable), and plots: per-second emotion probabilities against the requested
emotion, CSIM over time, mouth opening against the speech envelope, head pose over time, and a contact
sheet of eight frames. Plots use matplotlib's object API (no pyplot, no global backend state).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from portrait.errors import PortraitError

logger = logging.getLogger(__name__)

#: (metric, test on the value, message): a flagged line in the report when the test is true.
FLAGS: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("face_coverage", lambda v: v < 0.9, "the face is lost in {pct} of frames"),
    ("csim", lambda v: v < 0.8, "identity drifts from the reference (CSIM {v:.3f})"),
    ("emotion_accuracy", lambda v: v < 0.5, "the requested emotion is recognised in only {pct} of seconds"),
    ("sync_proxy_lag_frames", lambda v: abs(v) > 2, "lips are {v:+.0f} frames off the speech (proxy)"),
    ("sync_proxy_corr", lambda v: v < 0.2, "mouth movement barely follows the speech (r = {v:.2f})"),
    ("pose_jitter", lambda v: v > 1.0, "the head jitters ({v:.2f}°/frame²)"),
    ("blink_rate", lambda v: v < 3, "eyes hardly blink ({v:.1f}/min; people blink 10-20/min)"),
    ("flicker", lambda v: v > 4.0, "the background flickers ({v:.1f} grey levels per frame)"),
)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(text).stem)[:40] or "video"


def _values(series: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in series], dtype=np.float64)


def _least_span(ax: Any, values: np.ndarray, span: float, floor: float | None = None) -> None:
    """Show at least ``span`` on the y axis (centred on the data) so landmark noise does not look like
    motion; ``floor``: the axis starts there (a ratio or an amplitude)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    if floor is not None:
        ax.set_ylim(floor, max(high * 1.15, floor + span))
        return
    middle, half = (low + high) / 2, max(high - low, span) / 2 * 1.1
    ax.set_ylim(middle - half, middle + half)


def _axes(height: float = 2.6, **figure: Any) -> tuple[Figure, Any]:
    """A full-width figure of one plot (8 inches wide, ``height`` tall) and its axes."""
    fig = Figure(figsize=(8, height), **figure)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> str:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path.name


def plot_emotion(lines: dict[str, Any], path: Path) -> str | None:
    data = lines.get("emotion")
    if not data or not data["seconds"]:
        return None
    seconds, probs, classes = np.array(data["seconds"]), np.array(data["probs"]), data["classes"]
    fig, ax = _axes(3.4, layout="constrained")
    for k, name in enumerate(classes):
        ax.plot(seconds + 0.5, probs[:, k], marker="o", label=name)
    requested = data.get("requested")
    if requested:
        for s, label in zip(seconds, requested, strict=True):
            colour = ax.lines[classes.index(label)].get_color() if label in classes else "grey"
            ax.axvspan(s, s + 1, ymin=0.94, ymax=1.0, color=colour, alpha=0.8)
            ax.text(s + 0.5, 1.06, label, ha="center", fontsize=7)
    ax.set(
        xlabel="time (s)",
        ylabel="probability",
        ylim=(0, 1.12),
        title="expression per second (bar: requested)",
    )
    fig.legend(fontsize=7, ncol=len(classes), loc="outside lower center")
    return _save(fig, path)


def plot_csim(lines: dict[str, Any], path: Path) -> str | None:
    data = lines.get("csim")
    if not data or not data["time"]:
        return None
    fig, ax = _axes()
    values = _values(data["value"])
    ax.plot(data["time"], values, marker=".", color="tab:blue")
    finite = values[np.isfinite(values)]
    lowest = float(finite.min()) if finite.size else 1.0
    ax.set_ylim(min(0.6, lowest - 0.05), 1.02)  # a fixed scale: 0.999 vs 0.9995 is not a drift
    mean = f" (mean {finite.mean():.3f})" if finite.size else ""
    ax.set(xlabel="time (s)", ylabel="cosine to reference", title=f"identity (CSIM) over time{mean}")
    return _save(fig, path)


def plot_mouth(
    lines: dict[str, Any],
    lag: float | None,
    path: Path,
    corr: float | None = None,
    max_lag: float | None = None,
) -> str | None:
    """Mouth opening (red, left axis from 0) and the speech RMS envelope (grey, right axis).

    The title names the best lag and its correlation; a lag at the edge of the search (``max_lag``) or a
    weak correlation is said to be no clear lag rather than shown as a measurement.
    """
    data = lines.get("mouth")
    if not data:
        return None
    time = np.array(lines["time"])
    fig, ax = _axes()
    opening = _values(data["opening"])
    (mouth,) = ax.plot(time, opening, color="tab:red", label="mouth opening")
    ax.set(xlabel="time (s)", ylabel="mouth opening / eye distance")
    _least_span(ax, opening, 0.3, floor=0.0)
    twin = ax.twinx()
    (speech,) = twin.plot(time, _values(data["envelope"]), color="tab:grey", alpha=0.7, label="speech RMS")
    twin.set_ylabel("speech RMS")
    twin.set_ylim(bottom=0)
    ax.legend(handles=[mouth, speech], fontsize=7, loc="upper right")
    suffix = ""
    if lag is not None:
        r = f", r = {corr:.2f}" if corr is not None else ""
        at_edge = max_lag is not None and abs(lag) >= max_lag
        weak = corr is not None and corr < 0.2
        verdict = ": no clear lag" if at_edge or weak else ""
        suffix = f" (best lag {lag:+.0f} frames{r}{verdict})"
    ax.set_title("mouth opening vs speech envelope" + suffix)
    return _save(fig, path)


def plot_pose(lines: dict[str, Any], path: Path) -> str | None:
    data = lines.get("pose")
    if not data:
        return None
    time = np.array(lines["time"])
    fig, ax = _axes()
    for axis in ("yaw", "pitch", "roll"):
        values = _values(data[axis])
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
        ax.plot(time, values - mean, label=f"{axis} (mean {mean:+.1f}°)")
    # Each angle about its mean, at least 10 degrees shown: a 1-degree landmark wobble stays small.
    _least_span(ax, np.concatenate([ln.get_ydata() for ln in ax.lines]), 10.0)
    ax.set(xlabel="time (s)", ylabel="degrees from the mean", title="head pose (about each angle's mean)")
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    return _save(fig, path)


def contact_sheet(video: Path, duration: float, path: Path, count: int = 8) -> str | None:
    """Eight evenly spaced frames in one row (re-reads the video at a low rate)."""
    from portrait.preprocess.video import iter_frames

    rate = max(count / max(duration, 1e-3), 0.05)
    try:
        frames = list(iter_frames(video, fps=rate, max_frames=count, max_side=200))
    except PortraitError as error:
        logger.warning("no contact sheet for %s: %s", video, error)
        return None
    if not frames:
        return None
    fig = Figure(figsize=(1.6 * len(frames), 2.0))
    for k, (time, frame) in enumerate(frames):
        ax = fig.add_subplot(1, len(frames), k + 1)
        ax.imshow(frame)
        ax.set_title(f"{time:.1f} s", fontsize=8)
        ax.axis("off")
    return _save(fig, path)


def flags(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-language problems found in one video's metrics."""
    out = []
    for name, test, message in FLAGS:
        metric = metrics.get(name, {})
        value = metric.get("value")
        if metric.get("available") and value is not None and test(value):
            pct = f"{(1 - value) * 100:.0f} %" if name == "face_coverage" else f"{value * 100:.0f} %"
            out.append(message.format(v=value, pct=pct))
    return out


def _format(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = ["<tr><th>metric</th><th>value</th><th>backend</th><th>notes</th></tr>"]
    for name, m in metrics.items():
        extra = {k: v for k, v in m.items() if k not in ("value", "available", "backend", "reason")}
        notes = m.get("reason") or ", ".join(
            f"{k} {_format(v)}" for k, v in extra.items() if not isinstance(v, dict)
        )
        style = "" if m.get("available") else ' class="na"'
        rows.append(
            f"<tr{style}><td>{name}</td><td>{_format(m.get('value'))}</td>"
            f"<td>{html.escape(str(m.get('backend', '')))}</td><td>{html.escape(str(notes))}</td></tr>"
        )
    return "<table>" + "\n".join(rows) + "</table>"


_STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}tr.na{color:#999}.flag{color:#b00}"
    "img{max-width:100%;display:block;margin:6px 0}"
)


def write_report(results: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` and one set of PNGs per video; returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for index, result in enumerate(results):
        stem = f"{index:02d}_{_slug(result['video'])}"
        lines, metrics = result.get("timelines", {}), result["metrics"]
        lag = metrics.get("sync_proxy_lag_frames", {}).get("value")
        proxy = metrics.get("sync_proxy_corr", {})
        images = [
            plot_emotion(lines, out_dir / f"{stem}_emotion.png"),
            plot_csim(lines, out_dir / f"{stem}_csim.png"),
            plot_mouth(lines, lag, out_dir / f"{stem}_mouth.png", proxy.get("value"), proxy.get("max_lag")),
            plot_pose(lines, out_dir / f"{stem}_pose.png"),
            contact_sheet(
                Path(result["video"]), float(result.get("duration", 0)), out_dir / f"{stem}_frames.png"
            ),
        ]
        problems = flags(metrics) or ["no problem flagged"]
        sections.append(
            f"<h2>{html.escape(result['video'])}</h2>"
            f"<p>{result.get('frames', '?')} frames at {result.get('fps', '?')} fps</p>"
            "<ul>"
            + "".join(f'<li class="flag">{html.escape(p)}</li>' for p in problems)
            + "</ul>"
            + _table(metrics)
            + "".join(f'<img src="{name}" alt="{name}">' for name in images if name)
        )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>portrait evaluation</title>"
        f"<style>{_STYLE}</style></head><body><h1>portrait evaluation</h1>"
        "<p>Grey rows: metric unavailable (the notes say what to supply). See docs/evaluation.md.</p>"
        + "\n".join(sections)
        + "</body></html>"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
