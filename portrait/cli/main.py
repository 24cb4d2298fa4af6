"""``portrait-gen`` command line: argument parsing, logging set-up and exit codes.

Exit codes: 0 success, 1 a :class:`~portrait.errors.PortraitError` (one ``error: ...`` line on stderr; the
traceback only with ``--debug``), 2 usage error. Parsing imports nothing heavy (``--help`` is instant): each
command imports torch and friends inside its ``run`` function.

Commands live in :data:`COMMANDS` (name → :class:`Command`). ``portrait-gen`` without a command name runs
:data:`DEFAULT_COMMAND` (meant for generation: ``portrait-gen --image ... --audio ...``); while that is
``None`` it prints the usage and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from portrait import __version__
from portrait.app.launch import add_app_arguments, run_app
from portrait.batch.main import add_batch_arguments, run_batch
from portrait.cli.common import configure_logging, print_error
from portrait.cli.doctor import add_doctor_arguments, run_doctor
from portrait.cli.download import add_convert_arguments, add_download_arguments, run_convert, run_download
from portrait.cli.emotions import add_emotions_arguments, run_emotions
from portrait.cli.evaluate import add_eval_arguments, run_eval
from portrait.cli.generate import EPILOG as GENERATE_EPILOG
from portrait.cli.generate import add_generate_arguments, run_generate
from portrait.cli.motion import add_motion_arguments, run_motion
from portrait.cli.train import add_train_arguments, run_train
from portrait.constants import EXIT_ERROR, EXIT_USAGE
from portrait.errors import PortraitError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        help: one-line description for ``--help``.
        add_arguments: adds the command's flags to its sub-parser.
        run: executes the parsed command and returns the exit code (imports heavy modules itself).
        epilog: text shown after the flags in the command's ``--help``.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None


#: Every subcommand, in the order of ``--help``: name, flags, run, one-line help.
_COMMAND_TABLE = (
    ("generate", add_generate_arguments, run_generate,
     "animate a portrait photo with a speech recording (the default command)"),
    ("download", add_download_arguments, run_download,
     "download the official weights and convert them (the only networked command)"),
    ("doctor", add_doctor_arguments, run_doctor,
     "check ffmpeg, the weights tree and its hashes, the device and library versions"),
    ("emotions", add_emotions_arguments, run_emotions, "list the emotion bank and the --emotion syntax"),
    ("eval", add_eval_arguments, run_eval,
     "measure videos: identity, emotion, lip sync, motion (JSON lines, --report HTML)"),
    ("app", add_app_arguments, run_app, "serve the Gradio web demo (127.0.0.1 unless told otherwise)"),
    ("batch", add_batch_arguments, run_batch,
     "render a manifest of jobs (also `portrait-batch`): local, static shards or Ray"),
    ("motion", add_motion_arguments, run_motion,
     "driving-video motion: `motion extract VIDEO -o track.json` (landmark track for --motion)"),
    ("train", add_train_arguments, run_train,
     "fine-tuning: `train prepare SRC`, `train embedder|motion`, `train install` (docs/training.md)"),
    ("convert", add_convert_arguments, run_convert,
     "convert the DICE-Talk research release into a portrait weights tree"),
)  # fmt: skip
COMMANDS: dict[str, Command] = {
    name: Command(help, add_arguments, run, GENERATE_EPILOG if name == "generate" else None)
    for name, add_arguments, run, help in _COMMAND_TABLE
}


#: Command run when the arguments name none (``portrait-gen --image ... --audio ...`` → generation). ``None``:
#: naming a command is required (usage error otherwise).
DEFAULT_COMMAND: str | None = "generate"
_GLOBAL_FLAGS = ("--debug", "--quiet")


def route(argv: Sequence[str]) -> list[str]:
    """Insert :data:`DEFAULT_COMMAND` after the leading global flags when ``argv`` names no command.

    ``--help`` / ``--version`` alone and an already named command are left alone.
    """
    argv = list(argv)
    head = 0
    while head < len(argv) and argv[head] in _GLOBAL_FLAGS:
        head += 1
    rest = argv[head:]
    if DEFAULT_COMMAND is None or (rest and rest[0] in COMMANDS) or rest == ["--version"]:
        return argv
    return argv[:head] + [DEFAULT_COMMAND] + rest


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="portrait-gen",
        description="Emotional talking-portrait video generation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common_flags(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_flags(common, default=argparse.SUPPRESS)  # also accepted after the command name
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(
            sub.add_parser(
                name,
                help=command.help,
                description=command.help,
                parents=[common],
                epilog=command.epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
    return parser


def _add_common_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="debug logging and full tracebacks"
    )
    parser.add_argument("--quiet", action="store_true", default=default, help="only warnings and errors")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``portrait-gen``; returns the exit code (0 ok, 1 PortraitError, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(route(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # argparse: --help / --version (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("portrait-gen: error: name a command", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(debug=args.debug, quiet=args.quiet)
    try:
        return COMMANDS[args.command].run(args)
    except PortraitError as err:
        print_error(err, args.debug, args.command)
        return EXIT_ERROR
    except OSError as err:  # a full disk, a read-only folder: one error line, not a traceback
        print_error(PortraitError(f"cannot write: {err}"), args.debug, args.command)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
