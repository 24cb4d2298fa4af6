"""The web demo's logic (L4): UI values → :class:`~portrait.inputs.Job` + config → mp4, face box, info.

``app.py`` builds the Gradio widgets and calls :class:`Studio`; nothing here imports gradio, and nothing
heavy (torch, the engine) is imported before the first render or :func:`run_app`. Errors stay
:class:`~portrait.errors.PortraitError`; :func:`ui_message` turns one into a line for the page.

Safety: results live in a private (0700) temporary :class:`Workspace` that is pruned as it fills and
removed at exit; audio is capped at ``--max-seconds``; text emotion specs are parsed (never read as file
paths); uploads are capped by the launcher (``--max-file-size``) and images by ``load_image``'s pixel cap;
reference clips and driving videos are read within the library's bounds, and Cancel also stops their
analysis; "Save as emotion" writes into the weights tree only when the operator enabled it
(``save_emotions``, which the launcher allows only with ``--auth``), up to ``max_custom_emotions`` entries.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portrait.app.emotion_reference import reference_fields
from portrait.app.present import draw_face_box, public_sidecar, summary, ui_message
from portrait.app.request import (
    AppRequest,
    AppResult,
    emotion_spec,
    existing_upload,
    motion_source,
    qa_values,
    request_values,
    resolve_seed,
)
from portrait.app.workspace import Workspace
from portrait.config import RenderConfig, with_values
from portrait.constants import EMOTION_FILE_SUFFIXES, UNIT_SECONDS
from portrait.errors import (
    InputError,
    PortraitError,
)

if TYPE_CHECKING:
    from portrait.engine import Engine
    from portrait.inputs import Job

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_MAX_FILE_SIZE = "25mb"
DEFAULT_QUEUE_SIZE = 16
#: Most custom emotions "Save as emotion" may leave in the bank (when the operator enables it).
DEFAULT_MAX_CUSTOM_EMOTIONS = 20
#: Environment variable read for ``--auth`` when the flag is absent (keeps the password out of ``ps``).
AUTH_ENV = "PORTRAIT_APP_AUTH"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

Progress = Callable[[float, str], None]


class Cancelled(PortraitError):
    """The user cancelled the render."""


# ----------------------------------------------------------------------------------------------- studio
class Studio:
    """Loads the engine once (lazily, under a lock) and renders one request at a time."""

    def __init__(
        self,
        cfg: RenderConfig,
        *,
        detector: str = "auto",
        max_seconds: float = DEFAULT_MAX_SECONDS,
        workspace: Workspace | None = None,
        save_emotions: bool = False,
        max_custom_emotions: int = DEFAULT_MAX_CUSTOM_EMOTIONS,
    ):
        units = min(cfg.preprocess.max_audio_units, math.ceil(max_seconds / UNIT_SECONDS))
        self.cfg = with_values(cfg, {"preprocess.max_audio_units": units})
        self.max_seconds = units * UNIT_SECONDS
        self.detector = detector
        self.save_emotions = save_emotions  # "Save as emotion" writes into the weights tree (off by default)
        self.max_custom_emotions = max_custom_emotions
        self.workspace = workspace if workspace is not None else Workspace()
        self._engine: Engine | None = None
        self._load_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._running: str | None = None
        self._cancelled: set[str] = set()
        self._waiting: set[str] = set()  # sessions whose request waits for the render lock
        self._preparing: set[str] = set()  # sessions whose inputs are being decoded and analysed
        self._evaluate: Any = None  # emotion-QA evaluator (its face tools load on the first QA request)
        self._expression: Any = None  # expression classifier of "Emotion from a reference" (loaded on use)

    def engine(self) -> Engine:
        """The loaded engine (loaded on the first call)."""
        with self._load_lock:
            if self._engine is None:
                from portrait.engine import load_engine

                started = time.perf_counter()
                self._engine = load_engine(self.cfg, detector=self.detector)
                logger.info("engine loaded in %.1f s", time.perf_counter() - started)
            return self._engine

    def expression_classifier(self) -> Any:
        """The offline expression classifier of reference clips (loaded on the CPU on the first call)."""
        with self._load_lock:
            if self._expression is None:
                from portrait.weights.expression_classifier import load_expression_classifier

                self._expression = load_expression_classifier()
            return self._expression

    def emotion_names(self) -> list[str]:
        """The emotions of the loaded bank (sorted)."""
        return sorted(self.engine().bank)

    def job(self, request: AppRequest, output: Path) -> tuple[Job, RenderConfig]:
        """Validate ``request`` into a job writing ``output`` and its config (raises PortraitError)."""
        from portrait.inputs import Job
        from portrait.preprocess.emotion_spec import parse_emotion
        from portrait.preprocess.face import parse_face_box

        image, audio = existing_upload(request.image, "portrait"), existing_upload(request.audio, "audio")
        cfg = with_values(self.cfg, request_values(request))
        if request.emotion_file:
            spec = str(existing_upload(request.emotion_file, "emotion file"))
            if Path(spec).suffix.lower() not in EMOTION_FILE_SUFFIXES:
                raise InputError(
                    f"emotion file {Path(spec).name}: use one of {', '.join(EMOTION_FILE_SUFFIXES)}"
                )
        else:
            spec = emotion_spec(request.emotion, request.intensity, request.timeline, request.emotion_text)
            if (
                Path(spec).suffix.lower() in EMOTION_FILE_SUFFIXES
            ):  # typed text is a spec, never a server file
                parse_emotion(spec, self.emotion_names())  # raises: no emotion name ends in a file suffix
                raise InputError(f"unknown emotion {spec!r}")
        box = parse_face_box(request.face_box) if request.face_box and request.face_box.strip() else None
        index = None if request.face_index is None else int(request.face_index)
        seed = resolve_seed(request.seed, request.random_seed)
        motion = motion_source(request)
        job = Job(image, audio, output, emotion=spec, face_box=box, face_index=index, seed=seed,
                  motion=motion, **reference_fields(request))  # fmt: skip
        return job, cfg

    def run(
        self, request: AppRequest, progress: Progress | None = None, session: str | None = None
    ) -> AppResult:
        """Render one request into a fresh workspace run; raises PortraitError (see :func:`ui_message`)."""
        from portrait.eval.qa import QASettings, default_evaluator
        from portrait.inputs import prepare
        from portrait.rendering import render_job

        report = progress or (lambda fraction, what: None)
        started = time.perf_counter()
        self._cancelled.discard(session or "")
        report(0.0, "loading models")
        engine = self.engine()
        qa = qa_values(request)
        settings = None if qa is None else QASettings(**qa)  # up to 1 + retries renders, the best kept
        job, cfg = self.job(request, self.workspace.new_run() / "portrait.mp4")
        classifier = self.expression_classifier() if job.emotion_from is not None else None
        if session is not None:
            self._preparing.add(session)  # a Cancel now stops the reference / driving-video analysis
        try:
            prepared = prepare(job, cfg, engine.detector, engine.bank, expression_classifier=classifier,
                               check=self._session_check(session))  # fmt: skip
        finally:
            self._preparing.discard(session or "")
        report(0.02, "waiting for the previous render" if self._render_lock.locked() else "rendering")
        if session is not None:
            self._waiting.add(session)  # a Cancel while waiting is kept and stops it before it renders
        with self._render_lock:
            self._running = session
            self._waiting.discard(session or "")
            try:
                self._check_cancelled()
                if settings is not None and self._evaluate is None:
                    self._evaluate = default_evaluator()  # its tools load on the first QA render
                result = render_job(
                    prepared, engine, cfg, qa=settings, evaluate=self._evaluate, progress=True,
                    callback=self._step_callback,
                )  # fmt: skip
            finally:
                self._running = None
        info = result.info
        crop = tuple(info["crop_box"]) if info.get("crop_box") else None
        preview = draw_face_box(prepared.photo, tuple(info["face_box"]), crop)
        panel = summary(info, time.perf_counter() - started)
        if request.emotion_file:  # the upload's name, not its server path
            panel["emotion"] = f"file {Path(request.emotion_file).name}"
        if job.emotion_from is not None:  # the reference's name and what it gave (no server path)
            record = info.get("emotion_from", {})
            panel["emotion"] = f"from {Path(job.emotion_from).name} ({job.emotion_from_mode})"
            panel["emotion_from"] = {key: record.get(key) for key in ("strength", "embedder", "schedule")}
            panel["emotion_from"]["top"] = record.get("probabilities", {}).get("top")
        report(1.0, "done")
        return AppResult(result.output, public_sidecar(result.sidecar), preview, panel)

    def cancel(self, session: str | None) -> bool:
        """Ask ``session``'s request to stop: at the next frame of its reference clip or driving video while
        its inputs are analysed, before it starts while it waits for the previous render, or at its next
        sampling step."""
        active = self._preparing | self._waiting | {self._running}
        if session is None or session not in active:
            return False
        self._cancelled.add(session)
        return True

    def _session_check(self, session: str | None) -> Callable[[], None] | None:
        """The check ``prepare`` calls before each analysed frame: raises Cancelled once ``session`` is."""
        if session is None:
            return None

        def check() -> None:
            if session in self._cancelled:
                raise Cancelled("the request was cancelled")

        return check

    def _check_cancelled(self) -> None:
        if self._running is not None and self._running in self._cancelled:
            raise Cancelled("the render was cancelled")

    def _step_callback(self, step: int, steps: int, latents: Any) -> None:
        self._check_cancelled()

    def message(self, err: BaseException, request: AppRequest) -> str:
        """:func:`ui_message` with upload paths shown as their file names and the workspace hidden."""
        paths = {str(self.workspace.root): "<workspace>"}
        if self._engine is not None:  # the weights tree ("Save as emotion" writes there)
            root = self._engine.weights_root
            paths |= {str(root): "<weights>", str(Path(root).resolve()): "<weights>"}
        uploads = (request.image, request.audio, request.emotion_file, request.motion, request.emotion_from)
        for value in uploads:
            if value:
                paths[str(value)] = Path(value).name
                paths[str(Path(value).resolve())] = Path(value).name
        return ui_message(err, paths)
