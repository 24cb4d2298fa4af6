"""``train motion --validate-render DRIVING``: render a short clip with the guider being trained.

Every ``--validate-every N`` steps the trainer calls :class:`ValidationRenderer` with the current landmark
guider; it writes ``OUT/validation/step_N.mp4`` (+ its ``.json`` sidecar) through the ordinary render path
(:func:`portrait.inputs.prepare` once, then :func:`portrait.rendering.render_job` per call). The inputs are
decoded and checked when the renderer is built, before training starts; the engine (a second copy of the
frozen release models, in the render dtype) is loaded on the first call. Off by default.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import torch

from portrait.errors import InputError

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: Validation inputs when none are given: the packaged sample portrait and speech.
DEFAULT_IMAGE, DEFAULT_AUDIO = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
VALIDATION_DIR = "validation"


class ValidationRenderer:
    """Renders ``out/validation/step_N.mp4`` driven by ``driving`` with a given landmark guider.

    Args:
        weights: the weights tree being trained on (frozen). out: the run folder.
        driving: driving video or track ``.json`` (``--motion`` of a render).
        size: working size (the cache's). steps: sampling steps. image / audio: the portrait and speech.
    """

    def __init__(
        self,
        weights: Path,
        out: Path,
        driving: Path,
        size: int,
        steps: int = 10,
        image: Path | None = None,
        audio: Path | None = None,
    ) -> None:
        from portrait.config import load_config
        from portrait.inputs import Job, prepare
        from portrait.preprocess.detectors import detector_from_name
        from portrait.weights.load import emotion_names

        image, audio = Path(image or DEFAULT_IMAGE), Path(audio or DEFAULT_AUDIO)
        for path, what in ((driving, "driving video"), (image, "image"), (audio, "audio")):
            if not Path(path).is_file():
                raise InputError(f"--validate-render: the {what} {path} does not exist")
        if steps < 1:
            raise InputError(f"--validate-steps must be >= 1, got {steps}")
        self.folder = Path(out) / VALIDATION_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        values = {"runtime.weights": str(weights), "runtime.offline": True, "sampling.steps": steps,
                  "preprocess.min_resolution": size, "video.interpolate": False}  # fmt: skip
        self.cfg = load_config(values=values)
        self.detector = detector_from_name("dlib", Path(weights))
        job = Job(image, audio, self.folder / "step_0.mp4", seed=0, motion=Path(driving))
        self.prepared = prepare(job, self.cfg, self.detector, emotion_names(weights))  # fails before training
        self.engine = None

    def _load(self, device: torch.device) -> None:
        from portrait.config import with_values
        from portrait.engine import load_engine

        self.cfg = with_values(self.cfg, {"runtime.device": str(device)})
        self.engine = load_engine(self.cfg, detector=self.detector)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int) -> Path:
        """Render with a copy of ``model`` (the trained guider, left untouched); returns the video path."""
        from portrait.rendering import render_job

        if self.engine is None:
            self._load(next(model.parameters()).device)
        engine = self.engine
        guider = copy.deepcopy(model).to(engine.device, engine.dtype).eval()
        engine.pipe.register_modules(landmark_guider=guider)
        output = self.folder / f"step_{step}.mp4"
        prepared = replace(self.prepared, job=replace(self.prepared.job, output=output))
        result = render_job(prepared, engine, self.cfg)
        logger.info("validation render at step %d: %s", step, result.output)
        return result.output
