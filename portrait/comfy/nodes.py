"""The node pack on ComfyUI's V3 API (``comfy_api.latest``): imported by ComfyUI only.

ComfyUI imports the repository's root ``__init__.py``, which takes :func:`comfy_entrypoint` from here.
Each node's ``execute`` converts ComfyUI values and calls :mod:`portrait.comfy.render` /
:mod:`portrait.comfy.analysis`, which call the library as the CLI does; a
:class:`~portrait.errors.PortraitError` becomes one line in ComfyUI's error panel
(:func:`~portrait.comfy.messages.user_errors`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io, ui

from portrait.comfy import analysis
from portrait.comfy.engines import LoaderSettings, handle_for, install_unload_hooks
from portrait.comfy.messages import user_errors
from portrait.comfy.render import RenderRequest, render
from portrait.comfy.schemas import fps_input, framing_inputs, guidance_inputs, node_schema
from portrait.config import RenderConfig
from portrait.constants import (
    COMPILE_MODES,
    DETECTOR_NAMES,
    EMOTION_EMBEDDERS,
    EMOTION_FROM_MODES,
    EXTEND_MODES,
    MAX_EMOTION_STRENGTH,
    MAX_MOTION_GAIN,
    MOUTH_MODES,
    OFFLOAD_MODES,
    RETARGET_MODES,
    RUNTIME_DTYPES,
)
from portrait.errors import InputError

#: ComfyUI's model folder of weights trees (``models/portrait/<name>/``; extra_model_paths.yaml may add more).
WEIGHTS_FOLDER = "portrait"
#: The Loader's first choice: ``$PORTRAIT_WEIGHTS``, else ``./weights`` (the CLI's ``--weights`` default).
DEFAULT_WEIGHTS = "default"
NO_TRACK = "none"

Engine = io.Custom("PORTRAIT_ENGINE")
Motion = io.Custom("PORTRAIT_MOTION")
EmotionRef = io.Custom("PORTRAIT_EMOTION")

_D = RenderConfig()
_R = RenderRequest()


def _weights_choices() -> list[str]:
    names = {
        entry.name
        for folder in folder_paths.get_folder_paths(WEIGHTS_FOLDER)
        if os.path.isdir(folder)
        for entry in os.scandir(folder)
        if entry.is_dir()
    }
    return [DEFAULT_WEIGHTS, *sorted(names)]


def _weights_path(choice: str) -> str | None:
    if choice == DEFAULT_WEIGHTS:
        return None
    for folder in folder_paths.get_folder_paths(WEIGHTS_FOLDER):
        if os.path.isdir(os.path.join(folder, choice)) and os.sep not in choice:
            return os.path.join(folder, choice)
    return os.path.join(folder_paths.get_folder_paths(WEIGHTS_FOLDER)[0], choice)  # the loader names it


def _cancel() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


class PortraitLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PortraitLoader",
            "Portrait Loader",
            "Load the portrait models once (kept across queue runs; freed by 'Unload models').",
            inputs=[
                io.Combo.Input(
                    "weights",
                    options=_weights_choices(),
                    default=DEFAULT_WEIGHTS,
                    tooltip="a weights tree in models/portrait/, or default: $PORTRAIT_WEIGHTS, "
                    "else ./weights (downloaded when missing unless offline)",
                ),
                io.String.Input(
                    "device", default=_D.runtime.device, tooltip="auto, cpu, cuda, cuda:N or mps"
                ),
                io.Combo.Input("dtype", options=list(RUNTIME_DTYPES), default=_D.runtime.dtype),
                io.Combo.Input("detector", options=list(DETECTOR_NAMES), default="auto"),
                io.Combo.Input("offload", options=list(OFFLOAD_MODES), default=_D.runtime.offload),
                io.Combo.Input("compile", options=list(COMPILE_MODES), default=_D.runtime.compile),
                io.Boolean.Input("fast_attention", default=_D.runtime.fast_attention),
                io.Int.Input("window_batch", default=_D.runtime.window_batch, min=1, max=64),
            ],
            outputs=[Engine.Output(display_name="engine")],
        )

    @classmethod
    def execute(cls, weights: str, **settings: Any) -> io.NodeOutput:
        with user_errors("Portrait Loader"):
            handle = handle_for(LoaderSettings(weights=_weights_path(weights), **settings))
            handle.engine()
        return io.NodeOutput(handle)


class PortraitRender(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PortraitRender",
            "Portrait Render",
            "Animate a portrait with speech and an emotion (portrait-gen's render, same output).",
            inputs=[
                Engine.Input("engine"),
                io.Image.Input("image", tooltip="the portrait photo (the first image of a batch)"),
                io.Audio.Input("audio", tooltip="the speech"),
                *guidance_inputs(),
                *framing_inputs(),
                Motion.Input("motion", optional=True, tooltip="from Portrait Motion Track"),
                EmotionRef.Input(
                    "emotion_reference",
                    optional=True,
                    tooltip="from Portrait Emotion From Reference (replaces emotion)",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="frames"),
                io.Audio.Output(display_name="audio"),
                io.Float.Output(display_name="fps"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(
        cls,
        engine: Any,
        image: Any,
        audio: Any,
        motion: Any = None,
        emotion_reference: Any = None,
        **values: Any,
    ) -> io.NodeOutput:
        bar = comfy.utils.ProgressBar(values["steps"])
        with user_errors("Portrait Render"):
            out = render(
                engine, image, audio, RenderRequest(**values), motion=motion,
                emotion_reference=emotion_reference, work_root=Path(folder_paths.get_temp_directory()),
                progress=lambda done, total: bar.update_absolute(done, total), check_cancel=_cancel,
            )  # fmt: skip
        return io.NodeOutput(out.frames, out.audio, out.fps, json.dumps(out.info, indent=2, default=str))


class PortraitMotionTrack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tracks = [NO_TRACK, *sorted(folder_paths.filter_files_extensions(_input_files(), [".json"]))]
        m = _D.motion
        return node_schema(
            "PortraitMotionTrack",
            "Portrait Motion Track",
            "Follow the head in a driving video (or read a motion-extract track) for Render.",
            inputs=[
                io.Image.Input("frames", optional=True, tooltip="driving video frames"),
                fps_input(),
                io.Combo.Input(
                    "track_file",
                    options=tracks,
                    default=NO_TRACK,
                    tooltip="or a `portrait-gen motion extract` track in ComfyUI's input folder",
                ),
                io.Int.Input("face_index", default=-1, min=-1, max=64, tooltip="which face, -1/0 = largest"),
                io.Float.Input("max_seconds", default=600.0, min=0.1, max=3600.0),
                io.Combo.Input("retarget", options=list(RETARGET_MODES), default=m.retarget),
                io.Float.Input("pose_gain", default=m.pose_gain, min=0.0, max=MAX_MOTION_GAIN, step=0.05),
                io.Float.Input(
                    "expression_gain", default=m.expression_gain, min=0.0, max=MAX_MOTION_GAIN, step=0.05
                ),
                io.Combo.Input("mouth", options=list(MOUTH_MODES), default=m.mouth),
                io.Combo.Input("extend", options=list(EXTEND_MODES), default=m.extend),
            ],
            outputs=[Motion.Output(display_name="motion"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(
        cls,
        fps: float,
        track_file: str,
        face_index: int,
        max_seconds: float,
        frames: Any = None,
        **retarget: Any,
    ) -> io.NodeOutput:
        with user_errors("Portrait Motion Track"):
            values = analysis.motion_values(**retarget)
            if (frames is None) == (track_file == NO_TRACK):
                raise InputError("give either driving video frames or a track file, not both or neither")
            if frames is not None:
                track = analysis.track_from_frames(
                    frames, fps, face_index=None if face_index < 0 else face_index, max_seconds=max_seconds,
                    work_root=Path(folder_paths.get_temp_directory()),
                )  # fmt: skip
            else:
                track = analysis.track_from_file(track_file, Path(folder_paths.get_input_directory()))
            motion = analysis.MotionTrack(track, values)
        return io.NodeOutput(motion, json.dumps(motion.summary(), indent=2))


class PortraitEmotionFromReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PortraitEmotionFromReference",
            "Portrait Emotion From Reference",
            "Take the emotion from a reference image or clip (portrait-gen --emotion-from).",
            inputs=[
                Engine.Input("engine"),
                io.Image.Input("frames", tooltip="a reference image, or a clip's frames"),
                fps_input(),
                io.Combo.Input(
                    "mode",
                    options=list(EMOTION_FROM_MODES),
                    default="mean",
                    tooltip="mean: one mixture; timeline: follow the reference over time",
                ),
                io.Float.Input("strength", default=1.0, min=0.0, max=MAX_EMOTION_STRENGTH, step=0.05),
                io.Combo.Input("embedder", options=list(EMOTION_EMBEDDERS), default="auto"),
            ],
            outputs=[
                EmotionRef.Output(display_name="emotion_reference"),
                io.String.Output(display_name="summary"),
            ],
        )

    @classmethod
    def execute(cls, engine: Any, frames: Any, fps: float, **options: Any) -> io.NodeOutput:
        with user_errors("Portrait Emotion From Reference"):
            reference, info = analysis.emotion_reference(
                engine, frames, fps, work_root=Path(folder_paths.get_temp_directory()), **options
            )
        return io.NodeOutput(reference, json.dumps(info, indent=2, default=str))


class PortraitEvaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PortraitEvaluate",
            "Portrait Evaluate",
            "portrait-gen eval of frames + audio: identity, emotion, lip sync; the QA verdict.",
            inputs=[
                io.Image.Input("frames"),
                fps_input(),
                io.Audio.Input("audio", optional=True, tooltip="the speech (lip-sync proxy)"),
                io.Image.Input("reference", optional=True, tooltip="the portrait (identity CSIM)"),
                io.String.Input(
                    "emotion", default="", tooltip="the requested emotion spec (emotion accuracy, QA)"
                ),
                io.Float.Input("qa_threshold", default=_R.qa_threshold, min=0.0, max=1.0, step=0.05),
                Engine.Input(
                    "engine", optional=True, tooltip="its weights tree: ArcFace / SyncNet when present"
                ),
            ],
            outputs=[
                io.String.Output(display_name="metrics"),
                io.String.Output(display_name="table"),
                io.Boolean.Output(display_name="qa_passed"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames: Any, fps: float, engine: Any = None, **inputs: Any) -> io.NodeOutput:
        from portrait.cli.evaluate import format_table
        from portrait.weights.load import resolve_weights_root

        root = resolve_weights_root(engine.cfg.runtime.weights) if engine is not None else None
        with user_errors("Portrait Evaluate"):
            out = analysis.evaluate(
                frames, fps, weights_root=root, work_root=Path(folder_paths.get_temp_directory()), **inputs
            )
        table = format_table([out["result"]])
        verdict = f"emotion QA: {'passed' if out['qa']['passed'] else 'not passed'} ({json.dumps(out['qa'])})"
        text = f"{table}\n{verdict}"
        metrics = json.dumps(out, default=str)
        return io.NodeOutput(metrics, text, bool(out["qa"]["passed"]), ui=ui.PreviewText(text))


def _input_files() -> list[str]:
    folder = folder_paths.get_input_directory()
    return [entry.name for entry in os.scandir(folder) if entry.is_file()] if os.path.isdir(folder) else []


class PortraitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            PortraitLoader,
            PortraitRender,
            PortraitMotionTrack,
            PortraitEmotionFromReference,
            PortraitEvaluate,
        ]


async def comfy_entrypoint() -> PortraitExtension:
    """What ComfyUI calls to register the pack (V3 API): ``models/portrait/`` becomes a model folder (the
    Loader lists its weights trees) and "Unload models" also releases our engines. (ComfyUI 0.8 never calls
    ``ComfyExtension.on_load``, so this happens here.)"""
    folder_paths.add_model_folder_path(WEIGHTS_FOLDER, os.path.join(folder_paths.models_dir, WEIGHTS_FOLDER))
    install_unload_hooks(comfy.model_management)
    return PortraitExtension()
