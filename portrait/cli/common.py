"""What every command line of portrait shares: runtime flags, logging set-up, quiet libraries, error lines.

Used by ``portrait-gen`` (generate, app, batch) and ``portrait-batch``; imports nothing heavy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from portrait.constants import DETECTOR_NAMES, RUNTIME_DTYPES
from portrait.errors import (
    HINT_DLIB_DETECTOR,
    HINT_FACE_BOX,
    HINT_SHORTER_AUDIO,
    HINT_USE_CPU,
    PortraitError,
    describe,
)

logger = logging.getLogger(__name__)

_HANDLER_MARK = "_portrait_cli_handler"


def add_runtime_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--weights --device --dtype --detector --yolo-sha256 --offline --config --set`` (see
    :func:`runtime_values`)."""
    parser.add_argument(
        "--weights", type=Path, default=None, metavar="DIR",
        help="weights tree (default: $PORTRAIT_WEIGHTS or ./weights)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument(
        "--dtype", default=None, choices=RUNTIME_DTYPES, help="default: fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--detector", default="auto", choices=DETECTOR_NAMES, help="face detector (default: auto)"
    )
    parser.add_argument(
        "--yolo-sha256", default=None, metavar="HEX",
        help="sha256 of a face_detector/yoloface_v5m.pt you trust (TorchScript runs code while it loads; "
        "without it the file is used only when its digest is pinned)",
    )  # fmt: skip
    parser.add_argument("--offline", action="store_true", default=None, help="never download missing weights")
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.yaml",
        help="config preset (repeatable)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. sampling.steps=10 (repeatable)",
    )  # fmt: skip


def runtime_values(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted ``runtime.*`` (and ``preprocess.yolo_sha256``) config values of :func:`add_runtime_arguments`'s
    flags (None = not given)."""
    return {
        "runtime.weights": str(args.weights) if args.weights is not None else None,
        "runtime.device": args.device,
        "runtime.dtype": args.dtype,
        "runtime.offline": args.offline,
        "preprocess.yolo_sha256": getattr(args, "yolo_sha256", None),
    }


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (survives stream swaps, e.g. under pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def configure_logging(debug: bool = False, quiet: bool = False) -> None:
    """Send ``portrait.*`` log records to stderr: INFO by default, WARNING with quiet, DEBUG with debug."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("portrait")
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)


def quiet_libraries() -> None:
    """No progress bars from transformers / huggingface_hub (``--quiet``)."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


#: The command line's words for the library's hints (see portrait.errors).
CLI_HINTS = {
    HINT_FACE_BOX: "pass --face-box X,Y,W,H to give the face position",
    HINT_SHORTER_AUDIO: "set preprocess.max_audio_units or trim it",
    HINT_USE_CPU: "use --device cpu",
    HINT_DLIB_DETECTOR: "or use --detector dlib",
}


def print_error(err: PortraitError, debug: bool, what: str) -> None:
    """The one ``error: ...`` line on stderr (the traceback too with ``--debug``)."""
    if debug:
        logger.exception("%s failed", what)
    print("error: " + describe(err, CLI_HINTS), file=sys.stderr)


def add_weights_argument(parser: argparse.ArgumentParser, help_text: str, sub: bool = False) -> None:
    """``--weights DIR``; ``sub``: a subcommand's copy, which keeps a value given before the subcommand
    (``emotions --weights X add ...``) instead of resetting it to its own default."""
    parser.add_argument(
        "--weights",
        type=Path,
        default=argparse.SUPPRESS if sub else None,
        metavar="DIR",
        help=f"{help_text} (default: $PORTRAIT_WEIGHTS, else ./weights)",
    )
