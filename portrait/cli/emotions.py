"""The ``emotions`` subcommand: list the emotion bank, classify a face's expression, add or remove custom
emotions."""

from __future__ import annotations

import argparse
from pathlib import Path

from portrait.cli.common import add_weights_argument
from portrait.constants import EXIT_OK

EMOTION_SYNTAX = (
    "emotion specs (--emotion):\n"
    "  name                  happy\n"
    "  name:intensity        sad:0.6  (0 = neutral, 1 = the prior, up to 2)\n"
    "  mix                   happy:0.6+surprised:0.4\n"
    '  timeline (seconds)    "0:neutral, 2.5:happy"\n'
    "  or a prior / timeline file"
)


def add_emotions_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``portrait-gen emotions [classify|add|list|remove]`` (no action: list the bank)."""
    add_weights_argument(parser, "weights tree whose emotion bank is listed")
    actions = parser.add_subparsers(dest="emotions_action", required=False, metavar="ACTION")
    classify = actions.add_parser("classify", help="facial-expression probabilities of an image or video")
    classify.add_argument("media", type=Path, help="image or video with a face")
    classify.add_argument("--face-box", default=None, metavar="X,Y,W,H", help="face position (no detection)")
    classify.add_argument("--fps", type=float, default=2.0, help="video frames sampled per second")
    classify.add_argument("--json", action="store_true", help="print the JSON summary")
    add = actions.add_parser("add", help="add a custom emotion computed from reference clips")
    add.add_argument("name", help="new emotion name (letters, digits, _ and -)")
    add.add_argument("--from", dest="sources", type=Path, nargs="+", required=True, metavar="CLIP")
    add.add_argument("--strength", type=float, default=1.0, help="intensity of the mixture (0..2)")
    add.add_argument("--overwrite", action="store_true", help="replace an existing custom emotion")
    add_weights_argument(add, "weights tree to add the emotion to", sub=True)
    listing = actions.add_parser("list", help="list the bank (release and custom entries)")
    add_weights_argument(listing, "weights tree whose emotion bank is listed", sub=True)
    remove = actions.add_parser("remove", help="remove a custom emotion")
    remove.add_argument("name")
    add_weights_argument(remove, "weights tree to remove the emotion from", sub=True)


def run_emotions(args: argparse.Namespace) -> int:
    """List the bank (release vs custom) with the ``--emotion`` syntax, or classify / add / remove."""
    from portrait.layout import EMOTIONS_DIR
    from portrait.weights.load import resolve_weights_root

    action = getattr(args, "emotions_action", None)
    if action == "classify":
        return _emotions_classify(args)
    from portrait.weights import emotion_bank as custom

    root = resolve_weights_root(args.weights)
    if action == "add":
        from portrait.preprocess.detectors import DlibDetector
        from portrait.preprocess.emotion_from_reference import reference_prior
        from portrait.weights.expression_classifier import load_expression_classifier
        from portrait.weights.load import emotion_names, load_emotion_bank

        custom.check_new_name(args.name, emotion_names(root), overwrite=args.overwrite)  # before any work
        prior, records = reference_prior(
            args.sources,
            load_expression_classifier(),
            DlibDetector(),
            load_emotion_bank(root),
            strength=args.strength,
        )
        path = custom.add_emotion(root, args.name, prior, overwrite=args.overwrite)
        mixes = "; ".join(f"{r['file']}: {r['mix']}" for r in records)
        print(f"wrote {path} from {len(records)} clip(s) ({mixes})")
        return EXIT_OK
    if action == "remove":
        custom.remove_emotion(root, args.name)
        print(f"removed emotion {args.name!r} from {root / EMOTIONS_DIR}")
        return EXIT_OK
    print(f"emotions in {root / EMOTIONS_DIR}:")
    for name, kind, dim in custom.list_emotions(root):
        print(f"  {name:<12} ({dim}-d prior, {kind})")
    print(EMOTION_SYNTAX)
    return EXIT_OK


def _emotions_classify(args: argparse.Namespace) -> int:
    import json

    from portrait.preprocess.detectors import DlibDetector
    from portrait.preprocess.face import parse_face_box
    from portrait.preprocess.face_expressions import classify_media, format_expression_table
    from portrait.weights.expression_classifier import load_expression_classifier

    box = parse_face_box(args.face_box) if args.face_box else None
    detector = None if box is not None else DlibDetector()
    summary = classify_media(args.media, load_expression_classifier(), detector, face_box=box, fps=args.fps)
    print(json.dumps(summary, indent=2) if args.json else format_expression_table(summary))
    return EXIT_OK
