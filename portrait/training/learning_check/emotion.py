"""The learning check's emotion measure through the render path: ``--emotion-from CLIP --emotion-embedder
learned`` on held-out clips, as a user would run it.

The recipe's own ``val_accuracy`` reads the cache; this reads the videos again through ``inputs.prepare``
(the expression classifier on the reference clip's frames) and ``conditioning.encode`` (the job's Whisper
windows, then ``learned_emotion``), so a difference between what training cached and what a render feeds
the embedder shows up as a lower score here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def learned_top1(engine: Any, cfg: Any, clips: Sequence[tuple[Path, str]], portrait: Path, out: Path) -> dict:
    """Top-1 of the learned embedder over ``clips`` ((video, label) pairs) read through the render path.

    ``portrait``: any image with a face (the emotion does not depend on it); ``out``: a folder for the jobs'
    (never written) outputs. Returns ``{"top1", "clips", "predicted": {video name: top emotion}}``.
    """
    from portrait.conditioning import encode
    from portrait.inputs import Job, prepare

    out.mkdir(parents=True, exist_ok=True)
    predicted, hits = {}, 0
    for video, label in clips:
        job = Job(portrait, video, out / "unused.mp4", emotion_from=video, emotion_embedder="learned")
        prepared = prepare(job, cfg, engine.detector, list(engine.bank))
        top = encode(prepared, engine, cfg).emotion_info["emotion_from"]["learned"]["top"]
        predicted[f"{video.parent.name}/{video.name}"] = top
        hits += top == label
    return {"top1": round(hits / max(len(clips), 1), 4), "clips": len(clips), "predicted": predicted}
