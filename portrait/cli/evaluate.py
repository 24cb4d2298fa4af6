"""The ``eval`` subcommand: ``portrait-gen eval VIDEO... [--reference IMAGE] [--audio WAV] [--emotion SPEC]
[--gt VIDEO... [--fid] [--fvd]]``.

One JSON line per video (:func:`portrait.eval.evaluate.evaluate_video`) and one for the set
(:func:`portrait.eval.sets.evaluate_set`: pooled FID / FVD, means of the rest) go to stdout, or to ``--json
OUT.jsonl`` (written atomically) with a readable table and the protocols on stdout instead; ``--report DIR``
also writes ``report.html`` and its plots. Parsing imports nothing heavy; :func:`run_eval` imports the metric
models.
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
     "ground-truth video(s): one for all videos, or one per video in order (LMD, fd_clip; the real set of "
     "--fid / --fvd)", {"nargs": "+"}),
    ("--json", "OUT.jsonl", "write the JSON lines here, not to stdout", {}),
    ("--report", "DIR", "write report.html and PNG plots into DIR", {}),
    ("--weights", "DIR",
     "weights tree with the evaluation networks of `portrait-gen download --eval` (default: "
     "$PORTRAIT_WEIGHTS or ./weights)", {}),
    ("--syncnet", "PATH", "converted SyncNet safetensors (LSE-C/D) outside the tree", {}),
    ("--syncnet-sha256", "HEX", "expected sha256 of the --syncnet file", {"type": str}),
    ("--inception", "PATH", "converted FID Inception safetensors outside the tree", {}),
    ("--i3d", "PATH", "converted FVD I3D safetensors outside the tree", {}),
    ("--lse-protocol", "NAME",
     "tracked (syncnet_python's face tracks and crops, default) or whole-frame (Wav2Lip's LRS2 scorer: the "
     "video is already a face crop)",
     {"type": str, "default": "tracked", "choices": ("tracked", "whole-frame")}),
    ("--lse-min-track", "N",
     "a face track needs more than N detections (syncnet_python: 100, i.e. 4 s; lower it for short clips, "
     "which the protocol records)", {"type": int, "default": 100}),
    ("--device", "DEVICE", "where the networks run (cpu, cuda, cuda:1, auto, ...)",
     {"type": str, "default": "cpu"}),
    ("--clip-dir", "DIR",
     "transformers CLIP vision model folder for fd_clip (e.g. WEIGHTS/image_encoder)", {}),
)  # fmt: skip
#: Set metrics: flag, help.
SET_FLAGS = (
    ("--fid", "FID of all videos' frames against all --gt frames (pytorch-fid's Inception)"),
    ("--fvd", "FVD of all videos' 16-frame clips against all --gt clips (VideoGPT's I3D)"),
)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``portrait-gen eval``."""
    parser.add_argument("videos", type=Path, nargs="+", metavar="VIDEO", help="video(s) to evaluate")
    for flag, metavar, help_text, extra in OPTIONS:
        parser.add_argument(
            flag, **{"type": Path, "default": None, "metavar": metavar, "help": help_text, **extra}
        )
    for flag, help_text in SET_FLAGS:
        parser.add_argument(flag, action="store_true", help=help_text)


def _check_inputs(args: argparse.Namespace) -> list[Path | None]:
    """Fail fast on missing files; returns the ground truth paired with each video."""
    for video in args.videos:
        if not video.is_file():
            raise InputError(f"video {video} does not exist: give the path of an existing video file")
    files = (
        (args.reference, "reference image"), (args.audio, "audio"), (args.syncnet, "SyncNet"),
        (args.inception, "FID Inception"), (args.i3d, "I3D"),
    )  # fmt: skip
    for path, what in files:
        if path is not None and not path.is_file():
            raise InputError(f"{what} file {path} does not exist")
    gts: list[Path] = list(args.gt or [])
    for path in gts:
        if not path.is_file():
            raise InputError(f"ground-truth video {path} does not exist")
    if (args.fid or args.fvd) and not gts:
        raise InputError("--fid / --fvd compare the videos with real ones: give them with --gt VIDEO...")
    if args.lse_min_track < 0:
        raise InputError(f"--lse-min-track must be at least 0, got {args.lse_min_track}")
    if not gts:
        return [None] * len(args.videos)
    if len(gts) == 1:
        return gts * len(args.videos)
    if len(gts) != len(args.videos):
        raise InputError(
            f"--gt gives {len(gts)} videos for {len(args.videos)} evaluated ones: give one ground truth "
            "for all, or exactly one per video"
        )
    return list(gts)


def _cell(metric: dict[str, Any]) -> str:
    if not metric.get("available") or metric.get("value") is None:
        return "n/a"
    return f"{metric['value']:.3f}" if isinstance(metric["value"], float) else str(metric["value"])


def _column(result: dict[str, Any]) -> str:
    if result.get("kind") == "set":
        return f"set ({len(result['videos'])})"
    return Path(result["video"]).name


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A readable table: one row per metric, one column per video (and the set); unavailable reads ``n/a``."""
    from portrait.eval.evaluate import TABLE_METRICS

    names = [_column(r) for r in results]
    width = max(len(m) for m in TABLE_METRICS) + 2
    cols = [max(len(n), 8) + 2 for n in names]
    lines = ["metric".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols, strict=True))]
    for metric in TABLE_METRICS:
        cells = [_cell(r["metrics"].get(metric, {})) for r in results]
        lines.append(metric.ljust(width) + "".join(v.rjust(c) for v, c in zip(cells, cols, strict=True)))
    return "\n".join(lines)


def _describe(protocol: dict[str, Any]) -> str:
    weights = protocol.get("weights") or {}
    parts = [str(protocol.get("name"))]
    if weights:
        verified = "verified" if weights.get("verified") else "unverified"
        parts.append(f"weights {str(weights.get('sha256'))[:16]} ({verified})")
    for key in ("detector", "fps", "resolution", "frame_sampling", "frames_scored", "frames_left_out"):
        if protocol.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {protocol[key]}")
    if "comparable_with_papers" in protocol and not protocol["comparable_with_papers"]:
        parts.append("NOT comparable with papers' CSIM (ArcFace)")
    return "; ".join(parts)


def format_protocols(results: Sequence[dict[str, Any]]) -> str:
    """One line per metric that carries a protocol (from the set line when there is one): what decided it."""
    last = results[-1]
    lines = ["protocols:"]
    for name, metric in last["metrics"].items():
        if isinstance(metric.get("protocol"), dict):
            lines.append(f"  {name}: {_describe(metric['protocol'])}")
    for result in results:
        protocol = result["metrics"].get("sync_c", {}).get("protocol", {})
        if result.get("kind") == "video" and "frames_scored" in protocol:
            lines.append(
                f"  {Path(result['video']).name}: LSE scored {protocol['frames_scored']} of "
                f"{protocol['frames']} frames ({protocol['frames_left_out']} left out)"
            )
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
            print(format_protocols(results), file=out)
            print(f"wrote {args.json}", file=out)
    else:
        for line in lines:
            print(line, file=out)
        if not quiet:
            print(format_table(results), file=sys.stderr)
            print(format_protocols(results), file=sys.stderr)
    if args.report is not None:
        from portrait.eval.report import write_report

        page = write_report([r for r in results if r.get("kind") != "set"], args.report)
        if not quiet:
            print(f"wrote {page}", file=out if args.json is not None else sys.stderr)
    return EXIT_OK


def _device(name: str) -> str:
    """``--device`` checked (CUDA present when asked for; ``auto`` picks it when it is)."""
    from portrait.engine import resolve_device

    try:
        return str(resolve_device(name))
    except RuntimeError as error:
        raise InputError(f"--device {name!r} is not a device: {error}") from error


def _evaluate_all(args: argparse.Namespace, gts: Sequence[Path | None]) -> list[dict[str, Any]]:
    """The JSON result of every video (paired with its ground truth), then the set's; one set of tools."""
    from portrait.eval.evaluate import BANK_NAMES
    from portrait.eval.lse import LSESettings
    from portrait.eval.sets import evaluate_set
    from portrait.eval.sync_tracks import TrackRules
    from portrait.eval.toolkit import default_tools
    from portrait.preprocess.emotion_spec import parse_emotion
    from portrait.weights.load import resolve_weights_root

    schedule = parse_emotion(args.emotion, BANK_NAMES) if args.emotion is not None else None
    device = _device(args.device)
    lse = LSESettings(args.lse_protocol, TrackRules(min_track=args.lse_min_track))
    wanted = (("syncnet", args.syncnet), ("fid_inception", args.fid), ("i3d", args.fvd))
    require = [name for name, asked in wanted if asked]
    tools = default_tools(
        resolve_weights_root(args.weights), syncnet_path=args.syncnet, syncnet_sha256=args.syncnet_sha256,
        clip_dir=args.clip_dir, device=device, inception_path=args.inception, i3d_path=args.i3d, lse=lse,
        require=require,
    )  # fmt: skip
    return evaluate_set(
        args.videos, gts, tools, reference=args.reference, audio=args.audio, emotion_schedule=schedule,
        fid=args.fid, fvd=args.fvd,
    )  # fmt: skip
