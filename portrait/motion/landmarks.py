"""68-point facial landmarks behind one protocol, in the iBUG 300-W order everywhere.

The order (0-based): jaw 0-16 (from the subject's right ear, i.e. the image's left, round the chin), right
brow 17-21, left brow 22-26, nose bridge 27-30 (30 = nose tip), nostrils 31-35, right eye 36-41 (36 outer
corner), left eye 42-47 (45 outer corner), outer lips 48-59 (48 and 54 the corners), inner lips 60-67.

Implementations:

- :class:`DlibLandmarker` (default): dlib's ``shape_predictor_68_face_landmarks.dat`` as shipped by the
  ``face-recognition-models`` package. **Licence:** that model was trained on the iBUG 300-W data set, whose
  licence excludes commercial use; the model file inherits that restriction. Use it for research and
  personal work only, or swap in a landmarker whose weights you may use commercially.
- :class:`FaceAlignmentLandmarker`: the ``face-alignment`` package (2D-FAN); its weights are fetched by
  ``portrait-gen download`` into ``$TORCH_HOME/hub/checkpoints/`` and are never downloaded here.
- :class:`InsightFaceLandmarker`: insightface's ``1k3d68.onnx`` (part of ``buffalo_l``, non-commercial),
  loaded from a local folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from portrait.boxes import Box, corners
from portrait.errors import InputError, WeightsError

NUM_POINTS = 68

#: Point groups of the iBUG 300-W 68-point order (index arrays).
JAW = np.arange(0, 17)
RIGHT_BROW = np.arange(17, 22)
LEFT_BROW = np.arange(22, 27)
NOSE_BRIDGE = np.arange(27, 31)
NOSTRILS = np.arange(31, 36)
RIGHT_EYE = np.arange(36, 42)
LEFT_EYE = np.arange(42, 48)
OUTER_LIPS = np.arange(48, 60)
INNER_LIPS = np.arange(60, 68)
MOUTH = np.arange(48, 68)
NOSE_TIP = 30
#: Points that move with the skull, not with expressions: nose and the eye corners.
RIGID = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
#: Parts that get their own scale in retargeting.
PARTS: dict[str, np.ndarray] = {
    "jaw": JAW,
    "brows": np.concatenate([RIGHT_BROW, LEFT_BROW]),
    "nose": np.concatenate([NOSE_BRIDGE, NOSTRILS]),
    "eyes": np.concatenate([RIGHT_EYE, LEFT_EYE]),
    "mouth": MOUTH,
}

#: dlib's 68-point model inside the ``face-recognition-models`` package.
DLIB_MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
#: face-alignment's 2D-FAN checkpoint, as ``portrait-gen download`` stores it.
FAN_CHECKPOINT = "2DFAN4-11f355bf06.pth.tar"
INSIGHTFACE_LANDMARK_FILE = "1k3d68.onnx"


class Landmarker(Protocol):
    """Anything that places 68 points on a face.

    ``__call__(image, box)`` takes an (H, W, 3) uint8 RGB image and the face box ``(x, y, w, h)`` in its
    pixels and returns (68, 2) float32 ``(x, y)`` pixel coordinates in the iBUG 300-W order.
    """

    name: str

    def __call__(self, image: np.ndarray, box: Box) -> np.ndarray: ...


def check_rgb(image: np.ndarray) -> None:
    """InputError unless ``image`` is an (H, W, 3) uint8 array."""
    shape = getattr(image, "shape", ())
    if getattr(image, "dtype", None) != np.uint8 or len(shape) != 3 or shape[2] != 3:
        raise InputError(f"landmarkers take an (H, W, 3) uint8 RGB array, got {type(image)} {shape}")


def check_landmarks(points: np.ndarray, what: str = "landmarks") -> np.ndarray:
    """``points`` as a finite (68, 2) float32 array; InputError otherwise."""
    array = np.asarray(points, dtype=np.float32)
    if array.shape != (NUM_POINTS, 2):
        raise InputError(f"{what} must have shape (68, 2), got {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{what} contain NaN or infinite values")
    return array


def face_recognition_model(file_name: str, purpose: str) -> Path:
    """Path of ``models/<file_name>`` inside the installed ``face-recognition-models`` package (not imported:
    its own helper needs the removed ``pkg_resources``).

    Raises:
        WeightsError: the package, or that file in it, is missing; ``purpose`` says what needed it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"{purpose} needs the face-recognition-models package (dlib's models, non-commercial use): "
            "pip install -c constraints/ci.txt face-recognition-models"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / file_name
        if path.is_file():
            return path
    raise WeightsError(f"face-recognition-models is installed but has no models/{file_name} ({purpose})")


def dlib_model_path() -> Path:
    """Path of dlib's 68-point predictor inside ``face-recognition-models`` (WeightsError if missing)."""
    return face_recognition_model(DLIB_MODEL_FILE, "the dlib landmarker")


class DlibLandmarker:
    """dlib's 68-point shape predictor (about 3 ms per face on one core). Non-commercial model licence."""

    name = "dlib68"

    def __init__(self, model_path: Path | None = None) -> None:
        try:
            self._dlib = importlib.import_module("dlib")
        except ImportError as error:
            raise WeightsError("the dlib landmarker needs dlib: pip install dlib-bin") from error
        path = Path(model_path) if model_path is not None else dlib_model_path()
        if not path.is_file():
            raise WeightsError(f"dlib landmark model {path} not found")
        self._predictor = self._dlib.shape_predictor(str(path))

    def __call__(self, image: np.ndarray, box: Box) -> np.ndarray:
        check_rgb(image)
        x1, y1, x2, y2 = (int(round(v)) for v in corners(box))
        rect = self._dlib.rectangle(x1, y1, x2, y2)
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


class FaceAlignmentLandmarker:
    """``face-alignment``'s 2D-FAN on a given box; weights must already be in ``$TORCH_HOME``.

    Args:
        device: torch device string for face-alignment.
        torch_home: folder holding ``hub/checkpoints/2DFAN4-*.pth.tar`` (default ``$TORCH_HOME`` or
            ``~/.cache/torch``).
    """

    name = "face-alignment"

    def __init__(self, device: str = "cpu", torch_home: Path | None = None) -> None:
        home = Path(torch_home or os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
        checkpoint = home / "hub" / "checkpoints" / FAN_CHECKPOINT
        if not checkpoint.is_file():
            raise WeightsError(
                f"face-alignment weights {checkpoint} not found: run `portrait-gen download` with network "
                "access, or use the dlib landmarker"
            )
        try:
            face_alignment = importlib.import_module("face_alignment")
        except ImportError as error:
            raise WeightsError(
                "the face-alignment landmarker needs: pip install 'portrait[faces]'"
            ) from error
        os.environ.setdefault("TORCH_HOME", str(home))
        types = face_alignment.LandmarksType
        two_d = getattr(types, "TWO_D", None) or types._2D  # renamed in face-alignment 1.4
        # The detector is built (S3FD, whose weights `download` also fetches) but never run: boxes are given.
        self._model = face_alignment.FaceAlignment(
            two_d, device=device, flip_input=False, face_detector="sfd"
        )

    def __call__(self, image: np.ndarray, box: Box) -> np.ndarray:
        check_rgb(image)
        found = self._model.get_landmarks_from_image(image, detected_faces=[np.array(corners(box))])
        if not found:
            raise InputError(f"face-alignment found no landmarks in box {box}")
        return check_landmarks(np.asarray(found[0])[:, :2], "face-alignment landmarks")


class InsightFaceLandmarker:
    """insightface's 68-point 3D landmark model ``1k3d68.onnx`` from a local ``buffalo_l`` folder."""

    name = "insightface68"

    def __init__(self, model_dir: Path) -> None:
        path = Path(model_dir) / INSIGHTFACE_LANDMARK_FILE
        if not path.is_file():
            raise WeightsError(f"insightface landmark model {path} not found (part of buffalo_l)")
        try:
            model_zoo = importlib.import_module("insightface.model_zoo")
            self._face_class = importlib.import_module("insightface.app.common").Face
        except ImportError as error:
            raise WeightsError("the insightface landmarker needs: pip install 'portrait[faces]'") from error
        self._model = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
        self._model.prepare(ctx_id=-1)

    def __call__(self, image: np.ndarray, box: Box) -> np.ndarray:
        check_rgb(image)
        face = self._face_class(bbox=np.array(corners(box), dtype=np.float32))
        points = self._model.get(np.ascontiguousarray(image[:, :, ::-1]), face)
        return check_landmarks(np.asarray(points)[:, :2], "insightface landmarks")


def interocular(points: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners (36, 45): (..., 68, 2) → (...)."""
    return np.linalg.norm(points[..., 45, :] - points[..., 36, :], axis=-1)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap (mean of 61-67, 62-66, 63-65) over the interocular distance: (..., 68, 2) → (...)."""
    gap = np.linalg.norm(points[..., [61, 62, 63], :] - points[..., [67, 66, 65], :], axis=-1).mean(-1)
    return gap / np.maximum(interocular(points), 1e-6)


def eye_opening(points: np.ndarray) -> np.ndarray:
    """Mean eye aspect ratio (lid gap over eye width) of both eyes: (..., 68, 2) → (...)."""
    ratios = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        p = points[..., eye, :]
        gap = (
            np.linalg.norm(p[..., 1, :] - p[..., 5, :], axis=-1)
            + np.linalg.norm(p[..., 2, :] - p[..., 4, :], axis=-1)
        ) / 2
        ratios.append(gap / np.maximum(np.linalg.norm(p[..., 0, :] - p[..., 3, :], axis=-1), 1e-6))
    return (ratios[0] + ratios[1]) / 2
