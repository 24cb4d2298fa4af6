"""``portrait-gen motion extract VIDEO -o track.json [--face-index I] [--plot track.png] [--max-seconds S]``.

Parsing imports nothing heavy; :func:`run_motion` imports the motion package (dlib, OpenCV). A failure is a
:class:`~portrait.errors.PortraitError` (exit 1, one ``error:`` line) and leaves no file behind.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from portrait.constants import EXIT_OK
from portrait.errors import InputError

logger = logging.getLogger(__name__)


def add_motion_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``motion`` command's actions (``extract``)."""
    actions = parser.add_subparsers(dest="motion_action", required=True, metavar="ACTION")
    extract = actions.add_parser(
        "extract", help="follow one face of a driving video and write its landmark track as JSON"
    )
    extract.add_argument("video", type=Path, help="driving video (any format ffmpeg reads)")
    extract.add_argument("-o", "--output", type=Path, required=True, help="track JSON to write")
    extract.add_argument(
        "--face-index", type=int, default=None, metavar="I", help="which face, 0 = largest (default)"
    )
    extract.add_argument(
        "--plot", type=Path, default=None, metavar="PNG", help="also draw yaw/pitch/roll and mouth opening"
    )
    extract.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="read at most this much of the video (default 600)",
    )


def _check_extract(args: argparse.Namespace) -> None:
    if not args.video.is_file():
        raise InputError(f"driving video {args.video} does not exist or is not a file")
    if args.output.suffix.lower() != ".json":
        raise InputError(f"track output {args.output} must end in .json")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"plot {args.plot} must end in .png")
    if not args.max_seconds > 0:
        raise InputError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if args.face_index is not None and args.face_index < 0:
        raise InputError(f"--face-index must be >= 0, got {args.face_index}")
    for path in (args.output, args.plot):
        if path is not None and path.resolve() == args.video.resolve():
            raise InputError(f"output {path} is the driving video itself; choose another name")


def run_motion(args: argparse.Namespace) -> int:
    """Run ``motion extract``: the track JSON (and plot) are written only when extraction succeeds."""
    _check_extract(args)
    from portrait.motion.driving import extract_to_files

    existed = {p: p.exists() for p in (args.output, args.plot) if p is not None}
    try:
        track = extract_to_files(
            args.video,
            args.output,
            plot=args.plot,
            face_index=args.face_index,
            max_seconds=args.max_seconds,
        )
    except BaseException:
        for path, was_there in existed.items():  # the JSON is written before the plot: undo it
            if not was_there:
                path.unlink(missing_ok=True)
        raise
    if not args.quiet:
        plot = f" and {args.plot}" if args.plot is not None else ""
        print(f"wrote {args.output}{plot} ({len(track.times)} frames, {track.duration:.2f} s)")
    return EXIT_OK
