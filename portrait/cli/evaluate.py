"""The ``eval`` subcommand: ``portrait-gen eval VIDEO... [--reference IMAGE] [--audio WAV] [--emotion SPEC]``.

One JSON line per video (:func:`portrait.eval.evaluate.evaluate_video`) goes to stdout, or to ``--json
OUT.jsonl`` (written atomically) with a readable table on stdout instead; ``--report DIR`` also writes
``report.html`` and its plots. Parsing imports nothing heavy; :func:`run_eval` imports the metric models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from portrait.constants import EXIT_OK
from portrait.errors import InputError

logger = logging.getLogger(__name__)

#: Options of ``portrait-gen eval``: flag, metavar, help, and what differs from ``type=Path, default=None``.
OPTIONS = (
    ("--reference", "IMAGE", "the portrait the videos should show (CSIM)", {}),
    ("--audio", "WAV", "the speech the lips should follow (default: each video's own audio track)", {}),
    ("--emotion", "SPEC", "the requested emotion spec or timeline (emotion accuracy)", {"type": str}),
    ("--gt", "VIDEO",
     "ground-truth video(s): one for all videos, or one per video in order (LMD, fd_clip)", {"nargs": "+"}),
    ("--json", "OUT.jsonl", "write the JSON lines here, not to stdout", {}),
    ("--report", "DIR", "write report.html and PNG plots into DIR", {}),
    ("--weights", "DIR",
     "weights tree (insightface/models/buffalo_l: ArcFace; syncnet/syncnet.safetensors: SyncNet)", {}),
    ("--syncnet", "PATH", "converted SyncNet safetensors (Sync-C/D)", {}),
    ("--syncnet-sha256", "HEX", "expected sha256 of the --syncnet file", {"type": str}),
    ("--clip-dir", "DIR",
     "transformers CLIP vision model folder for fd_clip (e.g. WEIGHTS/image_encoder)", {}),
)  # fmt: skip


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``portrait-gen eval``."""
    parser.add_argument("videos", type=Path, nargs="+", metavar="VIDEO", help="video(s) to evaluate")
    for flag, metavar, help_text, extra in OPTIONS:
        parser.add_argument(
            flag, **{"type": Path, "default": None, "metavar": metavar, "help": help_text, **extra}
        )


def _check_inputs(args: argparse.Namespace) -> list[Path | None]:
    """Fail fast on missing files; returns the ground truth paired with each video."""
    for video in args.videos:
        if not video.is_file():
            raise InputError(f"video {video} does not exist", hint="give the path of an existing video file")
    for path, what in ((args.reference, "reference image"), (args.audio, "audio"), (args.syncnet, "SyncNet")):
        if path is not None and not path.is_file():
            raise InputError(f"{what} file {path} does not exist")
    gts: list[Path] = list(args.gt or [])
    for path in gts:
        if not path.is_file():
            raise InputError(f"ground-truth video {path} does not exist")
    if not gts:
        return [None] * len(args.videos)
    if len(gts) == 1:
        return gts * len(args.videos)
    if len(gts) != len(args.videos):
        raise InputError(
            f"--gt gives {len(gts)} videos for {len(args.videos)} evaluated ones",
            hint="give one ground-truth video for all, or exactly one per video",
        )
    return list(gts)


def _cell(metric: dict[str, Any]) -> str:
    if not metric.get("available") or metric.get("value") is None:
        return "n/a"
    return f"{metric['value']:.3f}" if isinstance(metric["value"], float) else str(metric["value"])


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A readable table: one row per metric, one column per video; unavailable metrics read ``n/a``."""
    from portrait.eval.evaluate import TABLE_METRICS

    names = [Path(r["video"]).name for r in results]
    width = max(len(m) for m in TABLE_METRICS) + 2
    cols = [max(len(n), 8) + 2 for n in names]
    lines = ["metric".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols, strict=True))]
    for metric in TABLE_METRICS:
        cells = [_cell(r["metrics"].get(metric, {})) for r in results]
        lines.append(metric.ljust(width) + "".join(v.rjust(c) for v, c in zip(cells, cols, strict=True)))
    return "\n".join(lines)


def _write_jsonl(path: Path, lines: Sequence[str]) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text("".join(line + "\n" for line in lines))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def run_eval(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """Evaluate every video with one set of tools; print/write the JSON lines, the table and the report."""
    out = stdout if stdout is not None else sys.stdout
    results = _evaluate_all(args, _check_inputs(args))
    lines = [json.dumps(result, default=str) for result in results]
    quiet = getattr(args, "quiet", False)
    if args.json is not None:
        _write_jsonl(args.json, lines)
        if not quiet:
            print(format_table(results), file=out)
            print(f"wrote {args.json}", file=out)
    else:
        for line in lines:
            print(line, file=out)
        if not quiet:
            print(format_table(results), file=sys.stderr)
    if args.report is not None:
        from portrait.eval.report import write_report

        page = write_report(results, args.report)
        if not quiet:
            print(f"wrote {page}", file=out if args.json is not None else sys.stderr)
    return EXIT_OK


def _evaluate_all(args: argparse.Namespace, gts: Sequence[Path | None]) -> list[dict[str, Any]]:
    """The JSON result of every video (paired with its ground truth), one set of tools for all."""
    from portrait.eval.evaluate import BANK_NAMES, evaluate_video
    from portrait.eval.toolkit import default_tools
    from portrait.preprocess.emotion_spec import parse_emotion

    schedule = parse_emotion(args.emotion, BANK_NAMES) if args.emotion is not None else None
    tools = default_tools(
        args.weights, syncnet_path=args.syncnet, syncnet_sha256=args.syncnet_sha256, clip_dir=args.clip_dir
    )
    inputs = {"reference": args.reference, "audio": args.audio, "emotion_schedule": schedule, "tools": tools}
    results = []
    for video, gt in zip(args.videos, gts, strict=True):
        logger.info("evaluating %s", video)
        results.append(evaluate_video(video, gt=gt, **inputs))
    return results
