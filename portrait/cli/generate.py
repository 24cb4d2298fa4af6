"""The default ``portrait-gen`` command: ``portrait-gen --image PATH --audio PATH [--emotion ...] [-o OUT]``.

Parsing imports nothing heavy; :func:`run_generate` imports torch and the engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from portrait.cli.common import add_runtime_arguments, quiet_libraries, runtime_values
from portrait.config import RenderConfig
from portrait.constants import (
    EMOTION_EMBEDDERS,
    EMOTION_FROM_MODES,
    EXTEND_MODES,
    MAX_MOTION_GAIN,
    MOUTH_MODES,
    RETARGET_MODES,
)
from portrait.errors import InputError

EPILOG = """commands:
  portrait-gen download [--weights DIR]          fetch and convert the official weights (the only network use)
  portrait-gen convert --from-dice-talk SRC --weights DST
  portrait-gen doctor [--weights DIR]            check ffmpeg, weights, device, versions
  portrait-gen emotions [--weights DIR]          list the emotion bank

emotion specs: NAME, NAME:INTENSITY, happy:0.6+surprised:0.4, "0:neutral, 2.5:happy:0.8, 6:sad",
  or a prior file (.safetensors / .npy) or a timeline file (.json / .yaml)."""


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags; defaults shown in the help come from :class:`~portrait.config.RenderConfig`."""
    D = RenderConfig()
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--image", type=Path, required=True, help="portrait photo (JPEG, PNG, WebP)")
    io.add_argument("--audio", type=Path, required=True, help="speech recording (any format ffmpeg reads)")
    io.add_argument(
        "--emotion", default="neutral", help="emotion spec or prior/timeline file (default: neutral)"
    )
    io.add_argument(
        "--emotion-transition",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"smooth change between timeline entries (default {D.sampling.emotion_transition:g})",
    )
    io.add_argument(
        "--emotion-from",
        type=Path,
        default=None,
        metavar="CLIP",
        help="take the emotion from the face in this image or video (replaces --emotion)",
    )
    io.add_argument(
        "--emotion-strength",
        type=float,
        default=1.0,
        metavar="S",
        help="total intensity of the --emotion-from mixture, 0..2 (default 1)",
    )
    io.add_argument(
        "--emotion-from-mode",
        choices=EMOTION_FROM_MODES,
        default="mean",
        help="mean: one mixture for the whole clip; timeline: follow the reference over time",
    )
    io.add_argument(
        "--emotion-embedder",
        choices=EMOTION_EMBEDDERS,
        default="auto",
        help="--emotion-from through the learned embedder (weights' emotion_embedder/) or the expression "
        "classifier's mapping (default auto: learned when present and the mode is mean)",
    )
    io.add_argument(
        "-o", "--output", type=Path, default=None, help="output mp4 (default: IMAGE_AUDIO.mp4 here)"
    )
    io.add_argument(
        "--dump-frames", type=Path, default=None, metavar="DIR", help="also write lossless PNG frames"
    )
    add_runtime_arguments(parser.add_argument_group("runtime"))
    qa = parser.add_argument_group("emotion QA")
    qa.add_argument(
        "--emotion-qa",
        action="store_true",
        help="evaluate the render; re-render with stronger emotion guidance when the emotion is not seen",
    )
    qa.add_argument(
        "--qa-threshold",
        type=float,
        default=0.5,
        metavar="P",
        help="least mean probability of the requested emotion (default 0.5)",
    )
    qa.add_argument("--qa-retries", type=int, default=2, metavar="K", help="re-renders at most (default 2)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--steps", type=int, default=None, help=f"denoising steps (default {D.sampling.steps})"
    )
    sampling.add_argument(
        "--seed", type=int, default=None, help=f"random seed (default {D.sampling.seed}, the reference's)"
    )
    sampling.add_argument(
        "--ref-scale",
        type=float,
        default=None,
        help=f"reference-image guidance (default {D.sampling.ref_scale_min:g})",
    )
    sampling.add_argument(
        "--emo-scale",
        type=float,
        default=None,
        help=f"audio+emotion guidance (default {D.sampling.emo_scale_min:g})",
    )
    face = parser.add_argument_group("face and framing")
    face.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"short side of the generated video, multiple of 64 (default {D.preprocess.min_resolution})",
    )
    face.add_argument(
        "--face-box", default=None, metavar="X,Y,W,H", help="face box in pixels (skips detection)"
    )
    face.add_argument("--face-index", type=int, default=None, metavar="N", help="which face, 0 = largest")
    face.add_argument(
        "--crop", action="store_true", default=None, help="animate a square crop around the face"
    )
    face.add_argument(
        "--full-frame",
        "--paste-back",
        dest="full_frame",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="animate a crop around the face and paste it back into the whole photo at its resolution "
        "(default: on when the crop is smaller than the photo; --no-full-frame: the resized photo only)",
    )
    face.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="N",
        help="cap on the long side of the full-frame output in pixels (default: the photo's size)",
    )
    face.add_argument(
        "--no-interpolate",
        dest="interpolate",
        action="store_false",
        default=None,
        help=f"skip frame interpolation ({D.sampling.fps:g} fps output)",
    )
    add_motion_arguments(parser.add_argument_group("motion (docs/motion.md)"))


def add_motion_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--motion VIDEO|track.json [--retarget MODE] [--motion-gain POSE,EXPR] [--mouth audio|video]
    [--motion-extend pingpong|hold]``; all but ``--motion`` set keys of the ``motion`` config section."""
    D = RenderConfig().motion
    group.add_argument(
        "--motion",
        type=Path,
        default=None,
        metavar="VIDEO|JSON",
        help="follow the head motion of a driving video or a `portrait-gen motion extract` track",
    )
    group.add_argument(
        "--retarget",
        choices=RETARGET_MODES,
        default=None,
        help=f"how the driving motion lands on the portrait (fixed: a still head; default {D.retarget})",
    )
    group.add_argument(
        "--motion-gain",
        type=parse_motion_gain,
        default=None,
        metavar="POSE,EXPR",
        help=f"scale of head motion and expression (default {D.pose_gain:g},{D.expression_gain:g})",
    )
    group.add_argument(
        "--mouth",
        choices=MOUTH_MODES,
        default=None,
        help=f"lips from the audio or from the driving video (default {D.mouth})",
    )
    group.add_argument(
        "--motion-extend",
        choices=EXTEND_MODES,
        default=None,
        help=f"a driving track shorter than the audio: back and forth, or hold (default {D.extend})",
    )


def parse_motion_gain(text: str) -> tuple[float, float]:
    """``"POSE,EXPR"`` (or one value for both) → two finite gains in [0, 4]."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(0.0 <= v <= MAX_MOTION_GAIN for v in values):
        raise argparse.ArgumentTypeError(
            f"expected POSE,EXPR gains between 0 and {MAX_MOTION_GAIN:g}, got {text!r}"
        )
    return values[0], values[1]


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config values given by flags (None = not given)."""
    both = lambda v: (v, v)  # noqa: E731
    ref = both(args.ref_scale) if args.ref_scale is not None else (None, None)
    emo = both(args.emo_scale) if args.emo_scale is not None else (None, None)
    gains = getattr(args, "motion_gain", None) or (None, None)
    return {
        "sampling.steps": args.steps,
        "sampling.seed": args.seed,
        "sampling.emotion_transition": args.emotion_transition,
        "sampling.ref_scale_min": ref[0],
        "sampling.ref_scale_max": ref[1],
        "sampling.emo_scale_min": emo[0],
        "sampling.emo_scale_max": emo[1],
        "preprocess.min_resolution": args.size,
        "preprocess.crop": args.crop,
        "video.interpolate": args.interpolate,
        "video.full_frame": args.full_frame,
        "video.max_size": args.max_size,
        "motion.retarget": getattr(args, "retarget", None),
        "motion.pose_gain": gains[0],
        "motion.expression_gain": gains[1],
        "motion.mouth": getattr(args, "mouth", None),
        "motion.extend": getattr(args, "motion_extend", None),
        **runtime_values(args),
    }


def default_output(image: Path, audio: Path) -> Path:
    return Path(f"{image.stem}_{audio.stem}.mp4")


def job_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~portrait.inputs.Job` of the flags (inputs checked to exist; default output name)."""
    from portrait.inputs import Job
    from portrait.preprocess.face import parse_face_box

    for path, what in ((args.image, "image"), (args.audio, "audio")):
        if not path.is_file():
            raise InputError(f"{what} file {path} does not exist")
    return Job(
        args.image,
        args.audio,
        args.output if args.output is not None else default_output(args.image, args.audio),
        emotion=args.emotion,
        face_box=parse_face_box(args.face_box) if args.face_box else None,
        face_index=args.face_index,
        seed=args.seed,
        dump_frames=args.dump_frames,
        emotion_from=args.emotion_from,
        emotion_strength=args.emotion_strength,
        emotion_from_mode=args.emotion_from_mode,
        emotion_embedder=args.emotion_embedder,
        motion=args.motion,
    )


def run_generate(args: argparse.Namespace) -> int:
    """Build the config and the job, prepare its inputs, make sure weights exist, load the engine once and
    render (one process, or one clip across the ranks of a torchrun / srun launch)."""
    from portrait.config import load_config, with_values
    from portrait.distributed.group import init_distributed
    from portrait.engine import load_engine
    from portrait.eval.qa import QASettings
    from portrait.inputs import prepare
    from portrait.layout import RELEASE_EMOTIONS
    from portrait.preprocess.detectors import detector_from_name
    from portrait.rendering import render_job
    from portrait.weights.hub import ensure_weights
    from portrait.weights.load import emotion_names, resolve_weights_root

    cfg = load_config(files=args.config, overrides=args.overrides, values=config_values(args))
    job = job_from_args(args)
    root = resolve_weights_root(cfg.runtime.weights)
    names = emotion_names(root) or RELEASE_EMOTIONS  # no tree yet: the download brings the release's bank
    detector = detector_from_name(args.detector, root, yolo_sha256=cfg.preprocess.yolo_sha256)
    # Inputs first, each read once: a bad file fails in a second, before any download or model load.
    prepared = prepare(job, cfg, detector, names)
    if args.quiet:
        quiet_libraries()
    bars = not args.quiet and sys.stderr.isatty()  # progress bars on a terminal only
    ctx = init_distributed(cfg.runtime.device)  # torchrun / srun: one rank per GPU (cuda:LOCAL_RANK)
    if ctx is not None:  # ranks never download (they would race on one tree): `portrait-gen download` first
        cfg = with_values(cfg, {"runtime.device": str(ctx.device), "runtime.offline": True})
    ensure_weights(root, offline=cfg.runtime.offline or None, progress=bars)  # None: $HF_HUB_OFFLINE
    engine = load_engine(cfg, detector=detector)
    qa = QASettings(threshold=args.qa_threshold, retries=args.qa_retries) if args.emotion_qa else None
    try:
        result = render_job(prepared, engine, cfg, qa=qa, progress=bars, distributed=ctx)
    finally:
        if ctx is not None:
            ctx.close()
    if not args.quiet and result.info.get("written", True):
        info = result.info
        print(
            f"wrote {result.output} ({info['video_frames']} frames at {info['fps']:g} fps, "
            f"{info['audio_seconds']:.2f} s, {info['timings']['total']:.1f} s) and {result.sidecar}"
        )
    return 0
