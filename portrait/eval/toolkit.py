"""The models an evaluation uses, gathered once (:class:`EvalTools`), and :func:`default_tools`.

Each optional tool that could not be built leaves ``None`` and a line in ``notes`` saying why; the metric
that needs it is then reported unavailable with that reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portrait.errors import PortraitError
from portrait.eval.frechet import ClipImageEncoder, ImageEncoder
from portrait.eval.identity import ArcFaceEmbedder, DlibFaceEmbedder, FaceEmbedder
from portrait.models.syncnet import SyncNet
from portrait.motion.landmarks import Landmarker
from portrait.preprocess.detectors import INSIGHTFACE_MODEL, INSIGHTFACE_ROOT, DlibDetector, FaceDetector
from portrait.preprocess.face_expressions import ExpressionClassifier

logger = logging.getLogger(__name__)

#: ``(path, fps, max_frames, max_side) → iterator of (seconds, (H, W, 3) uint8 RGB)``.
FrameReader = Callable[[Path, float, int | None, int | None], Iterator[tuple[float, np.ndarray]]]
#: ``frames (T, 224, 224, 3) uint8 → (K, D)`` clip features (an I3D for FVD).
ClipFeatureExtractor = Callable[[np.ndarray], np.ndarray]

SYNCNET_SUBPATH = Path("syncnet") / "syncnet.safetensors"


def _default_reader(path: Path, fps: float, max_frames: int | None, max_side: int | None):
    from portrait.preprocess.video import iter_frames

    return iter_frames(path, fps=fps, max_frames=max_frames, max_side=max_side)


@dataclass
class EvalTools:
    """Models and settings of an evaluation; build once, reuse for every video.

    Attributes:
        detector: face detector (default: dlib HOG). landmarker: 68-point landmarker (``None``: the
            landmark metrics are unavailable). embedder: face embedder for CSIM. classifier: expression
            classifier. syncnet: SyncNet in eval mode. clip / inception: image encoders for fd_clip / FID.
        i3d: clip feature extractor for FVD.
        notes: tool name → why it is missing (used as the metric's reason).
        fps: rate every video is resampled to. detect_every: detector stride (frames). csim_every: CSIM
            stride. feature_every: stride of the frames sent to clip / inception. max_side: frames are
            shrunk to this longer side. max_seconds: longest evaluated stretch.
        read_frames: frame reader (default :func:`portrait.preprocess.video.iter_frames`).
    """

    detector: FaceDetector | None = None
    landmarker: Landmarker | None = None
    embedder: FaceEmbedder | None = None
    classifier: ExpressionClassifier | None = None
    syncnet: SyncNet | None = None
    clip: ImageEncoder | None = None
    clip_name: str = "clip"
    inception: ImageEncoder | None = None
    i3d: ClipFeatureExtractor | None = None
    notes: dict[str, str] = field(default_factory=dict)
    fps: float = 25.0
    detect_every: int = 5
    csim_every: int = 5
    feature_every: int = 5
    max_side: int | None = 512
    max_seconds: float = 300.0
    read_frames: FrameReader = _default_reader

    def note(self, tool: str, default: str) -> str:
        return self.notes.get(tool, default)


def _try(notes: dict[str, str], tool: str, build: Callable[[], object]) -> object | None:
    try:
        return build()
    except (PortraitError, ImportError, OSError, RuntimeError) as error:
        notes[tool] = f"{tool} unavailable: {error}"
        logger.warning("%s", notes[tool])
        return None


def _landmarker() -> Landmarker:
    module = importlib.import_module("portrait.motion.landmarks")
    return module.DlibLandmarker()


def _classifier() -> ExpressionClassifier:
    module = importlib.import_module("portrait.weights.expression_classifier")
    return module.load_expression_classifier()


def _embedder(weights_root: Path | None, notes: dict[str, str]) -> FaceEmbedder | None:
    if weights_root is not None:
        root = Path(weights_root) / INSIGHTFACE_ROOT
        if any((root / "models" / INSIGHTFACE_MODEL).glob("*.onnx")):
            arcface = _try(notes, "arcface", lambda: ArcFaceEmbedder(root))
            if arcface is not None:
                return arcface  # type: ignore[return-value]
    notes.setdefault(
        "arcface", f"ArcFace unavailable: no {INSIGHTFACE_ROOT}/models/{INSIGHTFACE_MODEL}/*.onnx"
    )
    return _try(notes, "embedder", DlibFaceEmbedder)  # type: ignore[return-value]


def default_tools(
    weights_root: Path | None = None,
    *,
    syncnet_path: Path | None = None,
    syncnet_sha256: str | None = None,
    clip_dir: Path | None = None,
    device: str = "cpu",
) -> EvalTools:
    """Build every tool that is available offline; the rest get a reason in ``notes``.

    Args:
        weights_root: weights tree; ``insightface/models/buffalo_l`` there selects ArcFace for CSIM,
            ``syncnet/syncnet.safetensors`` there is the default SyncNet.
        syncnet_path, syncnet_sha256: a converted SyncNet file and its expected sha256.
        clip_dir: a transformers ``CLIPVisionModelWithProjection`` folder for ``fd_clip`` (e.g. the SVD
            ``image_encoder``); without it ``fd_clip`` is unavailable.
    """
    notes: dict[str, str] = {}
    tools = EvalTools(notes=notes)
    tools.detector = _try(notes, "detector", DlibDetector)  # type: ignore[assignment]
    tools.landmarker = _try(notes, "landmarker", _landmarker)  # type: ignore[assignment]
    tools.embedder = _embedder(weights_root, notes)
    tools.classifier = _try(notes, "classifier", _classifier)  # type: ignore[assignment]
    if syncnet_path is None and weights_root is not None and (Path(weights_root) / SYNCNET_SUBPATH).is_file():
        syncnet_path = Path(weights_root) / SYNCNET_SUBPATH
    if syncnet_path is not None:
        from portrait.weights.syncnet import load_syncnet

        tools.syncnet = _try(notes, "syncnet", lambda: load_syncnet(syncnet_path, syncnet_sha256, device))  # type: ignore[assignment]
    else:
        notes["syncnet"] = (
            "SyncNet weights not supplied: convert syncnet_v2.model (VGG, research licence) with "
            f"portrait.weights.syncnet.convert_syncnet_v2 into WEIGHTS/{SYNCNET_SUBPATH.as_posix()}"
        )
    if clip_dir is not None:

        def build_clip() -> ClipImageEncoder:
            transformers = importlib.import_module("transformers")
            model = transformers.CLIPVisionModelWithProjection.from_pretrained(str(clip_dir)).to(device)
            return ClipImageEncoder(model, name=f"clip image_embeds ({Path(clip_dir).name})")

        encoder = _try(notes, "clip", build_clip)
        if encoder is not None:
            tools.clip, tools.clip_name = encoder, encoder.name  # type: ignore[assignment, union-attr]
    else:
        notes["clip"] = "no CLIP image encoder given (e.g. WEIGHTS/image_encoder of SVD)"
    notes.setdefault(
        "inception", "FID needs an Inception feature extractor (its weights download; not supplied)"
    )
    notes.setdefault("i3d", "FVD needs an I3D feature extractor (its weights download; not supplied)")
    return tools
