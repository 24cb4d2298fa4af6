"""The learning check's figures: loss curves of every run, the measured trajectories, rendered frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RUNS = (("vae", "VAE (stand-in release)"), ("base", "UNet (stand-in release)"),
        ("motion", "train motion: landmark guider"), ("embedder", "train embedder"))  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def plot_losses(work: Path, path: Path) -> Path:
    """One panel per run: training loss (running mean over 10 logged steps) and fixed-batch loss."""
    from portrait.training.trainer import read_log

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(RUNS), figsize=(4 * len(RUNS), 3.2), dpi=100)
    for ax, (run, title) in zip(axes, RUNS, strict=True):
        records = read_log(work / run)
        train = np.array([(r["step"], r["loss"]) for r in records if r["kind"] == "train"])
        fixed = np.array([(r["step"], r["fixed_loss"]) for r in records if r["kind"] == "eval"])
        if len(train):
            smooth = (
                np.convolve(train[:, 1], np.ones(10) / 10, mode="valid") if len(train) >= 10 else train[:, 1]
            )
            ax.plot(train[len(train) - len(smooth) :, 0], smooth, lw=1, label="training loss (mean of 10)")
        if len(fixed):
            ax.plot(fixed[:, 0], fixed[:, 1], "o-", lw=1.5, label="fixed-batch loss")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_trajectories(render: dict[str, Any], path: Path) -> Path:
    """x(t) and y(t) of the driving path and of the face rendered with and without the guider."""
    plt = _pyplot()
    traj = {k: np.asarray(v) for k, v in render["trajectories"].items()}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    for axis, ax in enumerate(axes):
        name = "xy"[axis]
        ax.plot(traj["driving"][:, axis], "k-", lw=2, label="driving path")
        ax.plot(
            traj["with_guider"][:, axis], "C0o-", ms=3, label=f"with guider (r={render['with_guider'][name]})"
        )
        without = render["without_guider"][name]
        ax.plot(traj["without_guider"][:, axis], "C3s--", ms=3, label=f"without guider (r={without})")
        ax.set_xlabel("frame (12.5 fps)")
        ax.set_ylabel(f"face centre {name} (working pixels)")
        ax.legend(fontsize=7)
    fig.suptitle(f"held-out zigzag path {render['clip']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def contact_sheet(folder: Path, path: Path, every: int = 4) -> Path:
    """Every ``every``-th frame of the render with the guider (top) and without it (bottom)."""
    rows = []
    for name in ("with_guider", "without_guider"):
        files = sorted((folder / name).glob("*.png"))[::every]
        rows.append(np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in files], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def write_figures(work: Path, report: dict[str, Any], out: Path) -> list[Path]:
    """The loss panels, then per render its trajectories and frames, as PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_losses(work, out / "learning_check_losses.png")]
    for index, render in enumerate(report["renders"]):
        paths.append(plot_trajectories(render, out / f"learning_check_trajectory_{index}.png"))
        paths.append(contact_sheet(work / "renders" / str(index), out / f"learning_check_frames_{index}.png"))
    return paths
