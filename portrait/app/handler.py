"""The web demo's logic (L4): UI values → :class:`~portrait.generate.Job` + config → mp4, face box, info.

``app.py`` builds the Gradio widgets and calls :class:`Studio`; nothing here imports gradio, and nothing
heavy (torch, the engine) is imported before the first render or :func:`run_app`. Errors stay
:class:`~portrait.errors.PortraitError`; :func:`ui_message` turns one into a line for the page.

Safety: results live in a private (0700) temporary :class:`Workspace` that is pruned as it fills and
removed at exit; audio is capped at ``--max-seconds``; text emotion specs are parsed (never read as file
paths); uploads are capped by the launcher (``--max-file-size``) and images by ``load_image``'s pixel cap.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from portrait.app.emotion import reference_fields
from portrait.config import RenderConfig, with_values
from portrait.constants import EMOTION_FILE_SUFFIXES, MOUTH_MODES, RETARGET_MODES, UNIT_SECONDS
from portrait.errors import (
    HINT_DLIB_DETECTOR,
    HINT_FACE_BOX,
    HINT_SHORTER_AUDIO,
    HINT_USE_CPU,
    InputError,
    PortraitError,
    describe,
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
#: Finished runs kept in the workspace (older ones are pruned), and their longest life in seconds.
KEEP_RUNS = 16
RUN_MAX_AGE = 3600.0
#: Environment variable read for ``--auth`` when the flag is absent (keeps the password out of ``ps``).
AUTH_ENV = "PORTRAIT_APP_AUTH"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Suffixes of an uploaded emotion prior (.safetensors / .npy) or timeline (.json / .yaml) file.
PREVIEW_SIDE = 768
FACE_COLOUR, CROP_COLOUR = (0, 230, 64), (255, 160, 0)
#: CLI hints in library messages → what to do on the page.
#: The page's words for the library's hints (see portrait.errors).
UI_HINTS = {
    HINT_FACE_BOX: "enter the face position in Advanced → Face box",
    HINT_SHORTER_AUDIO: "trim it",
    HINT_USE_CPU: "the server has no GPU",
    HINT_DLIB_DETECTOR: "start the app with --detector dlib",
}

#: Most emotion-QA re-renders one request may ask for (each is a full render on a shared server).
MAX_QA_RETRIES = 3
#: Per-attempt emotion-QA scores shown in the info panel.
_QA_PANEL_KEYS = ("emo_scale", "emotion_confidence", "emotion_accuracy", "csim", "passed")
#: Sidecar keys also shown in the info panel.
_PANEL_EXTRAS = ("face_box", "crop_box", "size", "full_frame", "interpolated", "device")
#: What the info panel shows of the sidecar's motion record.
_MOTION_PANEL_KEYS = ("source_kind", "mode", "gains", "mouth", "extend", "applied", "frames")
#: Uploads accepted as a driving source: a `portrait-gen motion extract` track or a video ffmpeg reads.
MOTION_SUFFIXES = (".json", ".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")

Progress = Callable[[float, str], None]

#: Framing choices → config values: full frame when the face crop is smaller than the photo (auto), always
#: full frame (the animated crop pasted back into the photo), the whole photo resized (the reference), or a
#: square crop around the face.
FRAMINGS: dict[str, dict[str, Any]] = {
    "auto": {"preprocess.crop": False, "video.full_frame": "auto"},
    "full": {"preprocess.crop": False, "video.full_frame": True},
    "photo": {"preprocess.crop": False, "video.full_frame": False},
    "crop": {"preprocess.crop": True, "video.full_frame": False},
}


class Cancelled(PortraitError):
    """The user cancelled the render."""


@dataclass(frozen=True)
class AppRequest:
    """The values of the page's widgets (None: the launch config's default).

    ``timeline``: rows ``(time s, emotion, intensity)`` (list of lists, ``{"data": rows}`` or a DataFrame);
    ``emotion_text``: a full spec (mixes, timelines) that wins over the dropdown and the table;
    ``emotion_file``: an uploaded prior / timeline file that wins over everything; ``seed`` < 0 or
    ``random_seed``: a fresh random seed; ``framing``: one of :data:`FRAMINGS`; ``face_box``: ``"X,Y,W,H"``
    or empty (detect); ``max_size``: cap on the full-frame output's long side; ``emotion_qa``: render
    through the closed-loop emotion QA (:mod:`portrait.eval.qa`) with ``qa_threshold`` / ``qa_retries``
    (None: its defaults; retries at most :data:`MAX_QA_RETRIES`); ``motion``: an uploaded driving video or
    track ``.json`` whose head motion the portrait follows, with ``retarget`` / ``mouth`` (None: the launch
    config's ``motion`` section; docs/motion.md); ``emotion_from``: an uploaded picture or video whose facial
    expression sets the emotion (wins over every other emotion control) with ``emotion_from_mode`` (mean |
    timeline) and ``emotion_strength`` (0..2; docs/emotion.md).
    """

    image: str | Path | None
    audio: str | Path | None
    emotion: str = "neutral"
    intensity: float = 1.0
    timeline: Any = None
    emotion_text: str = ""
    emotion_file: str | Path | None = None
    ref_scale: float | None = None
    emo_scale: float | None = None
    steps: int | None = None
    seed: int | None = None
    random_seed: bool = False
    framing: str | None = None
    interpolate: bool | None = None
    size: int | None = None
    face_box: str = ""
    face_index: int | None = None
    max_size: int | None = None
    emotion_qa: bool = False
    qa_threshold: float | None = None
    qa_retries: int | None = None
    motion: str | Path | None = None
    retarget: str | None = None
    mouth: str | None = None
    emotion_from: str | Path | None = None
    emotion_from_mode: str | None = None
    emotion_strength: float | None = None


@dataclass
class AppResult:
    """One finished render: the mp4, its sidecar JSON, the input with the face box, the info panel."""

    video: Path
    sidecar: Path
    preview: Image.Image
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ UI values → job
def _is_blank(cell: Any) -> bool:
    text = "" if cell is None else str(cell).strip()
    return text in ("", "nan", "None")


def _number(cell: Any, what: str) -> float:
    try:
        value = float(str(cell).strip())
    except ValueError:
        raise InputError(f"{what} must be a number, got {cell!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, got {cell!r}")
    return value


def timeline_rows(table: Any) -> list[tuple[float, str, float]]:
    """Non-blank rows ``(time, emotion, intensity)`` of the timeline table; a blank intensity means 1."""
    if table is None:
        return []
    if isinstance(table, Mapping):
        table = table.get("data") or []
    elif hasattr(table, "columns") and hasattr(table, "values"):  # a pandas DataFrame
        table = table.values.tolist()
    rows = []
    for number, row in enumerate(table, start=1):
        cells = (list(row) + [None, None, None])[:3]
        if all(_is_blank(c) for c in cells):
            continue
        time_cell, name, weight = cells
        if _is_blank(time_cell) or _is_blank(name):
            raise InputError(f"emotion timeline row {number} needs a time and an emotion, got {list(row)}")
        intensity = 1.0 if _is_blank(weight) else _number(weight, f"emotion timeline row {number} intensity")
        rows.append((_number(time_cell, f"emotion timeline row {number} time"), str(name).strip(), intensity))
    return rows


def _term(name: str, intensity: float) -> str:
    return name if intensity == 1 else f"{name}:{intensity:g}"


def emotion_spec(emotion: str, intensity: float = 1.0, timeline: Any = None, text: str = "") -> str:
    """The ``--emotion`` spec of the page: ``text`` if given, else the timeline table, else ``name[:w]``.

    >>> emotion_spec("happy", 0.5, [[0, "neutral", ""], [2.5, "happy", 0.8]])
    '0:neutral, 2.5:happy:0.8'
    """
    if text and text.strip():
        return text.strip()
    rows = timeline_rows(timeline)
    if rows:
        return ", ".join(f"{t:g}:{_term(name, w)}" for t, name, w in rows)
    return _term(str(emotion).strip(), float(intensity))


def resolve_seed(seed: float | None, random_seed: bool = False) -> int:
    """The seed to use: a fresh random one when asked (``random_seed``, no seed, or a negative seed)."""
    if random_seed or seed is None or seed < 0:
        return secrets.randbelow(2**31)
    if seed != int(seed) or seed >= 2**63:
        raise InputError(f"seed {seed!r} must be a whole number in [0, 2^63)")
    return int(seed)


def request_values(request: AppRequest) -> dict[str, Any]:
    """Dotted config values of one request (None: keep the launch config's value)."""

    def finite(value: float | None, what: str) -> float | None:
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InputError(f"{what} must be a finite number, got {value!r}")
        return number

    def whole(value: float | None, what: str) -> int | None:
        number = finite(value, what)
        return None if number is None else int(round(number))

    ref_scale, emo_scale = finite(request.ref_scale, "ref scale"), finite(request.emo_scale, "emo scale")
    return {
        "sampling.steps": whole(request.steps, "steps"),
        "sampling.ref_scale_min": ref_scale,
        "sampling.ref_scale_max": ref_scale,
        "sampling.emo_scale_min": emo_scale,
        "sampling.emo_scale_max": emo_scale,
        "preprocess.min_resolution": whole(request.size, "size"),
        "video.interpolate": request.interpolate,
        "video.max_size": whole(request.max_size, "max size"),
        **framing_values(request.framing),
        **motion_values(request),
    }


def motion_values(request: AppRequest) -> dict[str, Any]:
    """Config values of the motion choices (None or empty: keep the launch config's ``motion`` section)."""
    values: dict[str, Any] = {}
    for key, value, allowed in (
        ("retarget", request.retarget, RETARGET_MODES),
        ("mouth", request.mouth, MOUTH_MODES),
    ):
        if value is None or not str(value).strip():
            continue
        if value not in allowed:
            raise InputError(f"{key} {value!r} must be one of {', '.join(allowed)}")
        values[f"motion.{key}"] = value
    return values


def motion_source(request: AppRequest) -> Path | None:
    """The uploaded driving video / track file (None: no motion); refuses other kinds of file."""
    if request.motion is None or not str(request.motion).strip():
        return None
    path = _existing(request.motion, "driving video")
    if path.suffix.lower() not in MOTION_SUFFIXES:
        raise InputError(f"driving video {path.name}: use a video ({', '.join(MOTION_SUFFIXES)}) or a track")
    return path


def framing_values(framing: str | None) -> dict[str, Any]:
    """Config values of a :data:`FRAMINGS` choice (None: keep the launch config's framing)."""
    if framing is None:
        return {}
    if framing not in FRAMINGS:
        raise InputError(f"framing {framing!r} must be one of {', '.join(FRAMINGS)}")
    return FRAMINGS[framing]


def qa_values(request: AppRequest) -> dict[str, Any] | None:
    """``{"threshold": P, "retries": K}`` (only the given ones) when the request asks for emotion QA, else
    None.

    Raises:
        InputError: a threshold outside [0, 1] or retries outside [0, :data:`MAX_QA_RETRIES`].
    """
    if not request.emotion_qa:
        return None
    values: dict[str, Any] = {}
    if request.qa_threshold is not None:
        threshold = _number(request.qa_threshold, "QA threshold")
        if not 0 <= threshold <= 1:
            raise InputError(f"QA threshold must be between 0 and 1, got {threshold:g}")
        values["threshold"] = threshold
    if request.qa_retries is not None:
        retries = _number(request.qa_retries, "QA retries")
        if retries != int(retries) or not 0 <= retries <= MAX_QA_RETRIES:
            raise InputError(f"QA retries must be a whole number from 0 to {MAX_QA_RETRIES}, got {retries:g}")
        values["retries"] = int(retries)
    return values


def default_framing(cfg: RenderConfig) -> str:
    """The :data:`FRAMINGS` choice matching ``cfg``."""
    if cfg.preprocess.crop:
        return "crop"
    full = getattr(cfg.video, "full_frame", False)
    return "auto" if full == "auto" else "full" if full else "photo"


def _existing(path: str | Path | None, what: str) -> Path:
    if path is None or not str(path).strip():
        raise InputError(f"no {what} given; upload one")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the {what} upload {path.name} is missing; upload it again")
    return path


# ----------------------------------------------------------------------------------------- presentation
def draw_face_box(
    image: Image.Image,
    face_box: tuple[float, float, float, float],
    crop_box: tuple[int, int, int, int] | None = None,
    max_side: int = PREVIEW_SIDE,
) -> Image.Image:
    """A copy of ``image`` (RGB) with the face box ``(x, y, w, h)`` in green and the crop ``(x1, y1, x2, y2)``
    in orange, downscaled to at most ``max_side`` pixels."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 160))
    x, y, w, h = (float(v) for v in face_box)
    draw.rectangle((x, y, x + w, y + h), outline=FACE_COLOUR, width=width)
    if crop_box is not None:
        draw.rectangle(tuple(float(v) for v in crop_box), outline=CROP_COLOUR, width=width)
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def summary(info: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The info panel: duration, frames, seconds taken, seed used (and what the render resolved)."""
    panel = {"duration_s": info["audio_seconds"], "frames": info["video_frames"], "fps": info["fps"]}
    panel |= {"seconds_taken": round(seconds, 2), "seed": info["seed"], "emotion": info["emotion"]}
    panel |= {key: info.get(key) for key in _PANEL_EXTRAS}
    if info.get("motion"):  # what the driving source did (the file's name only: it is a server path)
        record = info["motion"]
        panel["motion"] = {"source": Path(str(record.get("source", ""))).name}
        panel["motion"] |= {key: record[key] for key in _MOTION_PANEL_KEYS if key in record}
    qa = info.get("emotion_qa")
    if qa:  # each attempt's emotion confidence / CSIM and which one the video is
        attempts = [{key: attempt.get(key) for key in _QA_PANEL_KEYS} for attempt in qa["attempts"]]
        panel["emotion_qa"] = {
            "chosen": qa["chosen"],
            "passed": qa["passed"],
            "threshold": qa.get("threshold"),
            "attempts": attempts,
        }
    return panel


def ui_message(err: BaseException, paths: Mapping[str, str] = {}) -> str:  # noqa: B006 (read only)
    """One readable line for the page: the hint in the page's words, server paths by ``paths``' names."""
    text = describe(err, UI_HINTS)
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, paths[path])
    return text


# -------------------------------------------------------------------------------------------- workspace
class Workspace:
    """A private (0700) temporary folder for one app process; runs are pruned, the folder removed at exit."""

    def __init__(self, parent: Path | None = None, keep: int = KEEP_RUNS, max_age: float = RUN_MAX_AGE):
        self.root = Path(tempfile.mkdtemp(prefix="portrait-app-", dir=parent)).resolve()
        os.chmod(self.root, 0o700)
        self.runs = self.root / "runs"
        self.runs.mkdir(mode=0o700)
        self.keep, self.max_age = keep, max_age
        atexit.register(self.cleanup)

    def new_run(self) -> Path:
        """A fresh folder for one render (after pruning old ones)."""
        self.prune()
        return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=self.runs))

    def prune(self, now: float | None = None) -> list[Path]:
        """Remove runs older than ``max_age`` and all but the newest ``keep - 1``; returns what went."""
        now = time.time() if now is None else now
        runs = sorted(self.runs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        gone = [p for i, p in enumerate(runs) if i >= self.keep - 1 or now - p.stat().st_mtime > self.max_age]
        for path in gone:
            shutil.rmtree(path, ignore_errors=True)
        return gone

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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
    ):
        units = min(cfg.preprocess.max_audio_units, math.ceil(max_seconds / UNIT_SECONDS))
        self.cfg = with_values(cfg, {"preprocess.max_audio_units": units})
        self.max_seconds = units * UNIT_SECONDS
        self.detector = detector
        self.workspace = workspace if workspace is not None else Workspace()
        self._engine: Engine | None = None
        self._load_lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._running: str | None = None
        self._cancelled: set[str] = set()
        self._waiting: set[str] = set()  # sessions whose request waits for the render lock
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
                from portrait.weights.expression import load_expression_classifier

                self._expression = load_expression_classifier()
            return self._expression

    def emotion_names(self) -> list[str]:
        """The emotions of the loaded bank (sorted)."""
        return sorted(self.engine().bank)

    def job(self, request: AppRequest, output: Path) -> tuple[Job, RenderConfig]:
        """Validate ``request`` into a job writing ``output`` and its config (raises PortraitError)."""
        from portrait.inputs import Job
        from portrait.preprocess.emotion import parse_emotion
        from portrait.preprocess.face import parse_face_box

        image, audio = _existing(request.image, "portrait"), _existing(request.audio, "audio")
        cfg = with_values(self.cfg, request_values(request))
        if request.emotion_file:
            spec = str(_existing(request.emotion_file, "emotion file"))
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
        from portrait.generate import generate
        from portrait.inputs import prepare

        report = progress or (lambda fraction, what: None)
        started = time.perf_counter()
        self._cancelled.discard(session or "")
        report(0.0, "loading models")
        engine = self.engine()
        qa = qa_values(request)
        job, cfg = self.job(request, self.workspace.new_run() / "portrait.mp4")
        classifier = self.expression_classifier() if job.emotion_from is not None else None
        prepared = prepare(job, cfg, engine.detector, engine.bank, expression_classifier=classifier)
        report(0.02, "waiting for the previous render" if self._render_lock.locked() else "rendering")
        if session is not None:
            self._waiting.add(session)  # a Cancel while waiting is kept and stops it before it renders
        with self._render_lock:
            self._running = session
            self._waiting.discard(session or "")
            try:
                self._check_cancelled()
                render = lambda p, c: generate(  # noqa: E731
                    p, engine, c, progress=True, callback=self._step_callback
                )
                if qa is None:
                    result = render(prepared, cfg)
                else:  # up to 1 + retries renders, the best kept (portrait.eval.qa)
                    result = self._render_with_qa(prepared, render, cfg, qa)
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

    def _render_with_qa(self, prepared: Any, render: Callable, cfg: RenderConfig, qa: dict[str, Any]) -> Any:
        from portrait.eval.qa import QASettings, default_evaluator, render_with_qa

        if self._evaluate is None:
            self._evaluate = default_evaluator()
        return render_with_qa(prepared, render, cfg, QASettings(**qa), evaluate=self._evaluate)

    def cancel(self, session: str | None) -> bool:
        """Ask ``session``'s render to stop (at its next sampling step, or before it starts when it is
        still waiting for the previous render)."""
        if session is None or (self._running != session and session not in self._waiting):
            return False
        self._cancelled.add(session)
        return True

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


def public_sidecar(sidecar: Path) -> Path:
    """A copy of ``sidecar`` fit to hand to a visitor: every absolute path reduced to its file name.

    Written next to it as ``<stem>.public.json``; the server's own sidecar is left as it is.
    """
    import json

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return Path(value).name if os.path.isabs(value) else value
        if isinstance(value, Mapping):
            return {key: scrub(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [scrub(item) for item in value]
        return value

    data = json.loads(sidecar.read_text(encoding="utf-8"))
    public = sidecar.with_name(sidecar.name.removesuffix(".json") + ".public.json")
    public.write_text(json.dumps(scrub(data), indent=2) + "\n", encoding="utf-8")
    return public
