"""``portrait-gen train prepare|embedder|motion|install``: caches, the two trainers, installing the result.

Parsing imports nothing heavy; each action imports ``portrait.training`` inside its run function.
See docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from portrait.constants import EXIT_OK, STORE_DTYPES
from portrait.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

_TRAIN_FLAGS = ("steps", "batch_size", "lr", "seed", "checkpoint_every", "validate_every", "grad_accum",
                "mixed_precision")  # fmt: skip


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from err
    return index, count


def _trainer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="CACHE", help="cache of `train prepare`")
    parser.add_argument("--weights", type=Path, required=True, metavar="W", help="weights tree (frozen)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="run folder")
    parser.add_argument("--config", type=Path, default=None, help="YAML/JSON of trainer keys and `options`")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per micro-batch (default 4)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every draw (default 0)")
    parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    parser.add_argument(
        "--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default=None,
        help="default auto: bf16 on a CUDA device that has it, else no",
    )  # fmt: skip
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="default 500")
    parser.add_argument("--validate-every", type=int, default=None, metavar="N", help="0: at the end only")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="recipe option")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    parser.add_argument(
        "--validate-render", type=Path, default=None, metavar="DRIVING",
        help="motion: at every --validate-every step render OUT/validation/step_N.mp4 driven by DRIVING",
    )  # fmt: skip
    parser.add_argument("--validate-image", type=Path, default=None, help="portrait of the validation render")
    parser.add_argument("--validate-audio", type=Path, default=None, help="speech of the validation render")
    parser.add_argument("--validate-steps", type=int, default=10, help="its sampling steps (default 10)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` command's actions."""
    actions = parser.add_subparsers(dest="train_action", required=True, metavar="ACTION")
    prep = actions.add_parser("prepare", help="cache a folder of talking-head videos for training")
    prep.add_argument(
        "src", type=Path, help="MEAD/CREMA-D/RAVDESS folder or CSV path,emotion,intensity,speaker"
    )
    prep.add_argument("--out", type=Path, required=True, metavar="CACHE", help="cache folder (resumable)")
    prep.add_argument("--weights", type=Path, required=True, metavar="W", help="weights tree")
    prep.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="this worker's share")
    prep.add_argument("--size", type=int, default=512, help="short side of the working size (default 512)")
    prep.add_argument("--max-frames", type=int, default=250, help="frames kept per video at 12.5 fps")
    prep.add_argument("--val-fraction", type=float, default=0.1, help="share of speakers held out")
    prep.add_argument("--store-dtype", choices=STORE_DTYPES, default="fp16", help="of latents and audio")
    prep.add_argument("--device", default="cpu", help="device of the frozen encoders (default cpu)")
    for name, text in (("embedder", "train the audio-visual emotion embedder"),
                       ("motion", "train the landmark guider (release weights frozen)")):  # fmt: skip
        _trainer_flags(actions.add_parser(name, help=text))
    inst = actions.add_parser("install", help="add a trained component of OUT to a weights tree")
    inst.add_argument("out", type=Path, help="run folder of `train embedder|motion`")
    inst.add_argument("--weights", type=Path, required=True, metavar="W", help="weights tree to add it to")


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    from portrait.config import read_text_file

    text = read_text_file(path, "training config")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"training config {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"training config {path} must be a mapping")
    return data


def train_config(args: argparse.Namespace):
    """Defaults < ``--config`` < flags < ``--option``; unknown keys are a ConfigError."""
    import yaml

    from portrait.training.trainer import TrainConfig

    values = _read_config(args.config)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown training config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for name in _TRAIN_FLAGS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    options = dict(values.get("options") or {})
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option must be KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    values["options"] = options
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    action = args.train_action
    if action == "prepare":
        return _run_prepare(args)
    if action == "install":
        from portrait.training.install import install_component

        names = install_component(args.out, args.weights)
        print(f"installed {', '.join(names)} into {args.weights}")
        return EXIT_OK
    return _run_trainer(args)


def _run_prepare(args: argparse.Namespace) -> int:
    from portrait.training.data import check_labels, find_sources, select_shard
    from portrait.training.prepare import PrepareSettings, load_extractors, prepare_cache
    from portrait.weights.load import check_tree, emotion_names

    if args.size % 64 or args.size < 64:
        raise InputError(f"--size must be a multiple of 64, got {args.size}")
    check_tree(args.weights)
    sources = find_sources(args.src)
    check_labels(sources, emotion_names(args.weights))
    mine = select_shard(sources, args.shard)
    settings = PrepareSettings(size=args.size, max_frames=args.max_frames, val_fraction=args.val_fraction,
                               store_dtype=args.store_dtype)  # fmt: skip
    index = prepare_cache(mine, sources, args.out, args.weights, load_extractors(args.weights, args.device),
                          settings, progress=not args.quiet)  # fmt: skip
    splits = {s: sum(e["split"] == s for e in index["entries"]) for s in ("train", "val")}
    print(json.dumps({"cache": str(args.out), "videos": len(index["entries"]), "skipped": len(index["bad"]),
                      "complete": index["complete"], **splits}))  # fmt: skip
    return EXIT_OK


def _run_trainer(args: argparse.Namespace) -> int:
    from portrait.training.data import Cache
    from portrait.training.trainer import train

    cfg = train_config(args)
    cache = Cache(args.data)
    if args.train_action == "embedder":
        from portrait.training.emotion_embedder import EmbedderRecipe

        recipe = EmbedderRecipe(cache, args.weights, cfg.options, seed=cfg.seed)
    else:
        from portrait.training.landmark_guider import MotionRecipe

        recipe = MotionRecipe(cache, args.weights, cfg.options, cfg.gradient_checkpointing)
    render = _validation_renderer(args, cfg, cache)
    summary = train(recipe, cfg, args.out, resume=args.resume, progress=not args.quiet, render=render)
    print(json.dumps({k: summary[k] for k in ("component", "steps", "first_eval", "last_eval", "folder")}))
    return EXIT_OK


def _validation_renderer(args: argparse.Namespace, cfg, cache):
    """The ``--validate-render`` renderer of ``train motion`` (None when the flag is not given)."""
    if args.validate_render is None:
        return None
    if args.train_action != "motion":
        raise InputError("--validate-render renders with the landmark guider: it is for `train motion` only")
    if not cfg.validate_every:
        raise InputError("--validate-render needs --validate-every N (the steps to render at)")
    from portrait.training.validate import ValidationRenderer

    return ValidationRenderer(
        args.weights, args.out, args.validate_render, int(cache.index["settings"]["size"]),
        steps=args.validate_steps, image=args.validate_image, audio=args.validate_audio,
    )  # fmt: skip
