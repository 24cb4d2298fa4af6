"""The models an evaluation uses, gathered once (:class:`EvalTools`), and :func:`default_tools`.

Each optional tool that could not be built leaves ``None`` and a line in ``notes`` saying why; the metric
that needs it is then reported unavailable with that reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait.errors import PortraitError
from portrait.eval.features import I3DFeatures, InceptionFeatures
from portrait.eval.frechet import ClipImageEncoder, ImageEncoder
from portrait.eval.identity import ArcFaceEmbedder, DlibFaceEmbedder, FaceEmbedder
from portrait.eval.lse import LSESettings
from portrait.models.syncnet import SyncNet
from portrait.motion.landmarks import Landmarker
from portrait.preprocess.detectors import INSIGHTFACE_MODEL, INSIGHTFACE_ROOT, DlibDetector, FaceDetector
from portrait.preprocess.face_expressions import ExpressionClassifier
from portrait.weights.eval_weights import eval_weight, expected_sha256, missing_weights
from portrait.weights.load import resolve_weights_root
from portrait.weights.state_dicts import provenance

logger = logging.getLogger(__name__)

#: ``(path, fps, max_frames, max_side) → iterator of (seconds, (H, W, 3) uint8 RGB)``.
FrameReader = Callable[[Path, float, int | None, int | None], Iterator[tuple[float, np.ndarray]]]
SYNCNET_SUBPATH = Path(eval_weight("syncnet").target)
#: The evaluation networks' names in messages.
LABELS = {"syncnet": "SyncNet", "fid_inception": "FID Inception", "i3d": "I3D"}


def _default_reader(path: Path, fps: float, max_frames: int | None, max_side: int | None):
    from portrait.preprocess.video import iter_frames

    return iter_frames(path, fps=fps, max_frames=max_frames, max_side=max_side)


@dataclass
class EvalTools:
    """Models and settings of an evaluation; build once, reuse for every video.

    Attributes:
        detector: face detector (default: dlib HOG). landmarker: 68-point landmarker (``None``: the
            landmark metrics are unavailable). embedder: face embedder for CSIM. classifier: expression
            classifier. syncnet: SyncNet in eval mode. clip: image encoder for fd_clip.
        inception / i3d: FID / FVD feature extractors (:mod:`portrait.eval.features`).
        lse: the LSE protocol and its track rules. weights: network name → provenance of its file (sha256,
            source sha256, verified), recorded in the protocols.
        notes: tool name → why it is missing (used as the metric's reason). device: where networks run.
        fps: rate every video is resampled to. detect_every: detector stride (frames; every frame when the
            tracked LSE protocol runs). csim_every: CSIM stride. feature_every: stride of the frames sent to
            clip. fid_every: stride of the frames sent to the FID Inception (1: every frame, as papers do).
            max_side: frames are shrunk to this longer side (the paper metrics use the video's own frames).
            max_seconds: longest evaluated stretch.
        read_frames: frame reader (default :func:`portrait.preprocess.video.iter_frames`).
    """

    detector: FaceDetector | None = None
    landmarker: Landmarker | None = None
    embedder: FaceEmbedder | None = None
    classifier: ExpressionClassifier | None = None
    syncnet: SyncNet | None = None
    clip: ImageEncoder | None = None
    clip_name: str = "clip"
    inception: InceptionFeatures | None = None
    i3d: I3DFeatures | None = None
    lse: LSESettings = field(default_factory=LSESettings)
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    fps: float = 25.0
    detect_every: int = 5
    csim_every: int = 5
    feature_every: int = 5
    fid_every: int = 1
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


def _net_path(name: str, path: Path | None, root: Path | None) -> Path | None:
    """An explicit file, else the tree's file when it exists."""
    if path is not None:
        return Path(path)
    target = Path(root) / eval_weight(name).target if root is not None else None
    return target if target is not None and target.is_file() else None


def _load_net(
    tools: EvalTools, name: str, path: Path | None, sha256: str | None, root: Path | None, *, required: bool
) -> torch.nn.Module | None:
    """One evaluation network (``syncnet``, ``fid_inception``, ``i3d``); its provenance goes to
    ``tools.weights``. Missing or unloadable: a note, or a :class:`WeightsError` naming the file and how to
    install it when ``required``."""
    from portrait.weights import i3d, inception, syncnet

    loader = {
        "syncnet": syncnet.load_syncnet,
        "fid_inception": inception.load_fid_inception,
        "i3d": i3d.load_i3d,
    }
    weight = eval_weight(name)
    file = _net_path(name, path, root)
    if file is None:
        error = missing_weights(weight, resolve_weights_root(root), f"{LABELS[name]} weights not found")
        if required:
            raise error
        tools.notes[name] = str(error)
        return None
    if sha256 is None and root is not None and path is None:
        sha256 = expected_sha256(root, weight.target)
    try:
        net = loader[name](file, sha256, tools.device)
    except (PortraitError, OSError, RuntimeError) as error:
        if required:
            raise
        tools.notes[name] = f"{LABELS[name]} unavailable: {error}"
        logger.warning("%s", tools.notes[name])
        return None
    tools.weights[name] = provenance(file, sha256)
    return net


def default_tools(
    weights_root: Path | None = None,
    *,
    syncnet_path: Path | None = None,
    syncnet_sha256: str | None = None,
    clip_dir: Path | None = None,
    device: str = "cpu",
    inception_path: Path | None = None,
    i3d_path: Path | None = None,
    lse: LSESettings | None = None,
    require: Collection[str] = (),
) -> EvalTools:
    """Build every tool that is available offline; the rest get a reason in ``notes``. The evaluation
    networks load first, so a missing required one fails before anything else is built.

    Args:
        weights_root: weights tree (layout in :mod:`portrait.weights.eval_weights`): ArcFace for CSIM,
            SyncNet, the FID Inception and the FVD I3D are taken from it when present.
        syncnet_path, syncnet_sha256: a converted SyncNet file elsewhere and its expected sha256.
        clip_dir: a transformers ``CLIPVisionModelWithProjection`` folder for ``fd_clip``.
        inception_path, i3d_path: converted FID Inception / FVD I3D files elsewhere.
        lse: the LSE protocol (default ``tracked`` with syncnet_python's rules).
        require: networks that must load (``syncnet``, ``fid_inception``, ``i3d``): a missing one raises.

    Raises:
        WeightsError: a required network's file is missing (naming it and how to install it) or broken.
    """
    notes: dict[str, str] = {}
    tools = EvalTools(notes=notes, device=device, lse=lse or LSESettings())
    nets = (
        ("syncnet", syncnet_path, syncnet_sha256),
        ("fid_inception", inception_path, None),
        ("i3d", i3d_path, None),
    )
    loaded = {
        name: _load_net(tools, name, path, sha, weights_root, required=name in require)
        for name, path, sha in nets
    }
    tools.syncnet = loaded["syncnet"]  # type: ignore[assignment]
    tools.detector = _try(notes, "detector", DlibDetector)  # type: ignore[assignment]
    tools.landmarker = _try(notes, "landmarker", _landmarker)  # type: ignore[assignment]
    tools.embedder = _embedder(weights_root, notes)
    tools.classifier = _try(notes, "classifier", _classifier)  # type: ignore[assignment]
    if loaded["fid_inception"] is not None:
        tools.inception = InceptionFeatures(loaded["fid_inception"])
    if loaded["i3d"] is not None:
        tools.i3d = I3DFeatures(loaded["i3d"])
    if clip_dir is not None:
        encoder = _try(notes, "clip", lambda: _clip(clip_dir, device))
        if encoder is not None:
            tools.clip, tools.clip_name = encoder, encoder.name  # type: ignore[assignment, union-attr]
    else:
        notes["clip"] = "no CLIP image encoder given (e.g. WEIGHTS/image_encoder of SVD)"
    return tools


def _clip(clip_dir: Path, device: str) -> ClipImageEncoder:
    transformers = importlib.import_module("transformers")
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(str(clip_dir)).to(device)
    return ClipImageEncoder(model, name=f"clip image_embeds ({Path(clip_dir).name})")
