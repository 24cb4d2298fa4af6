"""The ``download`` and ``convert`` subcommands: a weights tree from the Hub, or from the release files;
``download --eval`` adds the evaluation networks.

Parsing imports nothing heavy; the ``run_*`` functions import what they need and print to stdout (the CLI
owns it). A :class:`~portrait.errors.PortraitError` propagates to ``cli.main``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from portrait.cli.common import add_weights_argument
from portrait.constants import EXIT_OK, STORE_DTYPES


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``portrait-gen download``."""
    add_weights_argument(parser, "weights tree to download and convert into")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the resumable download folder goes (default: next to the weights tree); it is deleted "
        "once the weights are converted",
    )
    parser.add_argument(
        "--eval",
        action="store_true",
        help="the evaluation networks instead (SyncNet, the FID Inception, the FVD I3D, ArcFace), converted "
        "into the tree with pinned hashes where known; see docs/evaluation.md",
    )
    parser.add_argument(
        "--from-files",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --eval: install the published files already downloaded by hand into DIR (no network)",
    )


def run_download(args: argparse.Namespace) -> int:
    """Download the public weights into the weights tree (:func:`portrait.weights.hub.download_weights`)."""
    from portrait.weights.hub import download_weights
    from portrait.weights.load import resolve_weights_root

    root = resolve_weights_root(args.weights)
    quiet = getattr(args, "quiet", False)
    if getattr(args, "eval", False) or getattr(args, "from_files", None) is not None:
        return _run_eval_download(args, root, quiet)
    # offline=None: HF_HUB_OFFLINE decides
    download_weights(root, cache_dir=args.cache_dir, offline=None, progress=not quiet)
    if not quiet:
        print(f"weights ready in {root}")
    return EXIT_OK


def _run_eval_download(args: argparse.Namespace, root: Path, quiet: bool) -> int:
    """``download --eval [--from-files DIR]``: the evaluation networks into the tree."""
    from portrait.errors import InputError
    from portrait.weights.eval_weights import install_eval_weights
    from portrait.weights.hub import download_eval_weights

    if not args.eval:
        raise InputError("--from-files installs evaluation weights: add --eval")
    if args.from_files is not None:
        files = install_eval_weights(args.from_files, root)
    else:
        files = download_eval_weights(root, cache_dir=args.cache_dir, offline=None, progress=not quiet)
    if not quiet:
        for target, digest in sorted(files.items()):
            print(f"{target}  sha256 {digest}")
        print(f"evaluation weights ready in {root}")
    return EXIT_OK


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``portrait-gen convert``."""
    folders = (
        ("--from-dice-talk", "src", "the DICE-Talk release checkpoints folder (DICE-Talk/, "
         "stable-video-diffusion-img2vid-xt/, whisper-tiny/)"),
        ("--weights", "dst", "weights tree to write (must be empty unless --overwrite)"),
    )  # fmt: skip
    for flag, dest, help_text in folders:
        parser.add_argument(flag, dest=dest, type=Path, required=True, metavar=dest.upper(), help=help_text)
    dtypes = ("keep", *STORE_DTYPES)
    parser.add_argument(
        "--dtype", choices=dtypes, default="keep", help="dtype of the tensors written (keep: the source's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the components of an existing tree")
    parser.add_argument(
        "--emotions-dir", type=Path, default=None, metavar="DIR",
        help="folder of the release emotion priors <emotion>.npy (default: searched near SRC)",
    )  # fmt: skip


def run_convert(args: argparse.Namespace) -> int:
    """Convert the DICE-Talk release into a weights tree (``weights.convert.convert_dice_talk``)."""
    from portrait.weights.convert import convert_dice_talk

    report = convert_dice_talk(
        args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, emotions_dir=args.emotions_dir
    )
    if not args.quiet:
        print(report.summary())  # the CLI owns stdout
    return EXIT_OK
