"""Face detectors behind one protocol (compat §1.2).

Detectors take a BGR uint8 (H, W, 3) array, as the reference's detector does, and return faces sorted by
descending score: :class:`YoloFaceDetector` (the reference's TorchScript YOLOv5-face),
:class:`InsightFaceDetector` (buffalo_l from a local folder) and :class:`DlibDetector` (dlib's built-in HOG
detector, needs no weights file). :func:`detector_from_name` picks one for a weights root.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from portrait.boxes import Box
from portrait.constants import DETECTOR_NAMES
from portrait.errors import HINT_DLIB_DETECTOR, HINT_FACE_BOX, ConfigError, InputError, WeightsError
from portrait.files import sha256_file
from portrait.layout import YOLO_SHA256_PINNED

logger = logging.getLogger(__name__)

#: Where :func:`detector_from_name` looks for detector weights inside a weights root.
YOLO_WEIGHTS = Path("face_detector") / "yoloface_v5m.pt"
INSIGHTFACE_ROOT = Path("insightface")
INSIGHTFACE_MODEL = "buffalo_l"


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        box: ``(x, y, w, h)`` in original-image pixels (floats; may extend past the image border).
        score: detector confidence (higher is better; scales differ between detectors).
        landmarks: optional (5, 2) float array of (x, y) keypoints (eyes, nose, mouth corners).
    """

    box: Box
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


class FaceDetector(Protocol):
    """Anything that finds faces: ``detect`` returns them sorted by descending score."""

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 BGR image, best first."""
        ...


def _check_bgr(image_bgr: np.ndarray) -> None:
    shape = getattr(image_bgr, "shape", ())
    if getattr(image_bgr, "dtype", None) != np.uint8 or len(shape) != 3 or shape[2] != 3:
        raise InputError(f"face detectors take an (H, W, 3) uint8 BGR array, got {type(image_bgr)} {shape}")


class DlibDetector:
    """dlib's HOG frontal-face detector (built into dlib, no weights file; offline fallback).

    ``min_score`` drops weak detections: dlib reports every window scoring above 0, and on
    ``skimage.data.astronaut()`` the mission patch on the suit scores 0.12 while the face scores 1.16.
    """

    name = "dlib"

    def __init__(self, upsample: int = 1, min_score: float = 0.3) -> None:
        try:
            dlib = importlib.import_module("dlib")
        except ImportError as error:
            raise InputError(
                "the dlib face detector needs dlib: pip install dlib-bin", hint=HINT_FACE_BOX
            ) from error
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.min_score = min_score

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        _check_bgr(image_bgr)
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        # run() = detector(rgb, upsample) plus the scores; threshold 0 is dlib's default.
        rects, scores, _ = self._detector.run(rgb, self.upsample, 0.0)
        faces = [
            Face((float(r.left()), float(r.top()), float(r.width()), float(r.height())), float(s))
            for r, s in zip(rects, scores, strict=True)
            if s >= self.min_score
        ]
        return sorted(faces, key=lambda f: -f.score)


def yolo_allow_list(user: str | Collection[str] | None = None) -> frozenset[str]:
    """The sha256 digests a YOLO detector file may have: :data:`YOLO_SHA256_PINNED` plus ``user``'s.

    ``user``: one digest, several separated by commas or spaces (the ``preprocess.yolo_sha256`` value), or
    a collection of digests. Lower-cased.
    """
    if user is None:
        given: list[str] = []
    elif isinstance(user, str):
        given = user.replace(",", " ").split()
    else:
        given = [str(d) for d in user]
    return frozenset(d.strip().lower() for d in [*YOLO_SHA256_PINNED, *given] if d.strip())


_UNLISTED_WARNED: set[tuple[str, str]] = set()


def _yolo_listed(path: Path, allowed: frozenset[str]) -> bool:
    """Whether ``path``'s sha256 is in ``allowed``; warns once per file and digest when it is not."""
    digest = sha256_file(path)
    if digest in allowed:
        return True
    if (str(path), digest) not in _UNLISTED_WARNED:
        _UNLISTED_WARNED.add((str(path), digest))
        logger.warning(
            "not loading the face detector %s: its sha256 %s is not on the allow-list (TorchScript runs code "
            "from the file while it loads); using the next detector. If you trust the file, pass "
            "--yolo-sha256 %s (config preprocess.yolo_sha256)",
            path, digest, digest,
        )  # fmt: skip
    return False


def yolo_input_size(height: int, width: int, side: int = 416) -> tuple[int, int]:
    """Network input ``(h1, w1)`` of the reference: ``r = side / min(h, w)``; ``int(h·r + 31) // 32 · 32``."""
    ratio = side / min(height, width)
    return int(height * ratio + 31) // 32 * 32, int(width * ratio + 31) // 32 * 32


def yolo_grids(height: int, width: int, strides: Sequence[int] = (8, 16, 32)) -> list[torch.Tensor]:
    """Cell grids for the TorchScript head: per stride a (1, 1, ny, nx, 2) float tensor of (x, y) cells."""
    grids = []
    for stride in strides:
        ny, nx = height // stride, width // stride
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grids.append(torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float())
    return grids


def _resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(INTER_LINEAR)`` when OpenCV is installed, else the same half-pixel bilinear in torch.

    The torch fallback computes in float and rounds to uint8; OpenCV uses 11-bit fixed-point weights, so
    pixels may differ by one grey level.
    """
    if image.shape[:2] == (height, width):
        return image.copy()
    if importlib.util.find_spec("cv2") is not None:
        cv2 = importlib.import_module("cv2")
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression as ``torchvision.ops.nms`` (no torchvision needed).

    Args:
        boxes: (n, 4) ``x1, y1, x2, y2``.
        scores: (n,) scores.
        iou_threshold: boxes overlapping a kept box with IoU strictly above this are dropped.

    Returns:
        (k,) int64 indices of the kept boxes, by descending score (ties: lower index first).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        top_left = torch.maximum(boxes[i, :2], boxes[:, :2])
        bottom_right = torch.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(1)
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def decode_yolo_rows(
    rows: torch.Tensor,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    conf_threshold: float = 0.5,
    iou_threshold: float = 0.45,
) -> list[Face]:
    """NMS and back-scaling of the YOLOv5-face rows (compat §1.2, ``non_max_suppression_face``, nc = 1).

    Args:
        rows: (n, 16) ``cx, cy, bw, bh, obj, 10 landmark coords, cls`` in network-input pixels.
        input_size: ``(h1, w1)`` of the network input.
        image_size: ``(h0, w0)`` of the original image.

    Returns:
        Faces in original pixels by descending ``conf = cls·obj``.
    """
    rows = rows[rows[:, 4] > conf_threshold].clone()
    rows[:, 15:] *= rows[:, 4:5]
    conf = rows[:, 15]
    centre, half = rows[:, 0:2], rows[:, 2:4] / 2
    xyxy = torch.cat([centre - half, centre + half], 1)
    keep = conf > conf_threshold
    xyxy, conf, landmarks = xyxy[keep], conf[keep], rows[keep, 5:15]
    kept = nms(xyxy, conf, iou_threshold)
    (h1, w1), (h0, w0) = input_size, image_size
    faces = []
    for i in kept.tolist():
        x1, y1, x2, y2 = (float(v) for v in xyxy[i])
        x, y = x1 * w0 / w1, y1 * h0 / h1
        points = landmarks[i].double().numpy().reshape(5, 2) * np.array([w0 / w1, h0 / h1])
        faces.append(Face((x, y, x2 * w0 / w1 - x, y2 * h0 / h1 - y), float(conf[i]), points))
    return faces


class YoloFaceDetector:
    """The reference's YOLOv5m-face TorchScript detector (``yoloface_v5m.pt``; compat §1.2).

    Loading TorchScript runs code from the file, so the file's sha256 is checked against
    ``expected_sha256`` (one hex digest or a collection of allowed digests; empty: none is) before loading;
    with ``None`` (a caller that vouches for the file itself) it is loaded with a warning that it is
    unverified. :func:`detector_from_name` always passes :func:`yolo_allow_list`.
    """

    name = "yolo"

    def __init__(
        self,
        model_path: Path,
        device: str | torch.device = "cpu",
        expected_sha256: str | Collection[str] | None = None,
        conf_threshold: float = 0.5,
        iou_threshold: float = 0.45,
        input_side: int = 416,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise WeightsError(f"face detector {model_path} not found; put yoloface_v5m.pt there or use dlib")
        digest = sha256_file(model_path)
        if expected_sha256 is None:
            logger.warning("loading unverified TorchScript face detector %s (sha256 %s)", model_path, digest)
        else:
            allowed = {expected_sha256} if isinstance(expected_sha256, str) else set(expected_sha256)
            if digest not in {a.lower() for a in allowed}:
                raise WeightsError(
                    f"face detector {model_path} has sha256 {digest}, not an allowed one (loading "
                    "TorchScript runs code from the file); if you trust it, pass "
                    f"--yolo-sha256 {digest} (config preprocess.yolo_sha256), or use --detector dlib",
                    hint=HINT_DLIB_DETECTOR,
                )
        try:
            with warnings.catch_warnings():  # deprecated in torch 2.13, but it is the file's format
                warnings.filterwarnings("ignore", r".*torch\.jit\.load.*", DeprecationWarning)
                self._model = torch.jit.load(str(model_path), map_location=device)
        except RuntimeError as error:
            raise WeightsError(f"{model_path} is not a loadable TorchScript file: {error}") from error
        self._model.eval()
        self.device = torch.device(device)
        self.conf_threshold, self.iou_threshold, self.input_side = conf_threshold, iou_threshold, input_side

    @torch.no_grad()
    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        _check_bgr(image_bgr)
        h0, w0 = image_bgr.shape[:2]
        h1, w1 = yolo_input_size(h0, w0, self.input_side)
        rgb = _resize_linear(image_bgr, h1, w1)[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0
        grids = [g.to(self.device) for g in yolo_grids(h1, w1)]
        output = self._model(tensor[None].to(self.device), grids)
        if isinstance(output, (tuple, list)):
            output = output[0]
        rows = output.detach().to("cpu", torch.float32)
        if rows.ndim != 3 or rows.shape[0] != 1 or rows.shape[2] != 16:
            raise WeightsError(f"face detector returned shape {tuple(rows.shape)}, expected (1, n, 16)")
        return decode_yolo_rows(rows[0], (h1, w1), (h0, w0), self.conf_threshold, self.iou_threshold)


def insightface_analysis(
    root: Path,
    modules: Sequence[str],
    purpose: str,
    model_name: str = INSIGHTFACE_MODEL,
    det_size: tuple[int, int] = (640, 640),
    hint: str | None = None,
) -> Any:
    """insightface's ``FaceAnalysis`` with ``modules`` (``"detection"``, ``"recognition"``, ...) of
    ``root/models/<model_name>/*.onnx``, prepared on the CPU; it never downloads.

    Raises:
        WeightsError: naming ``purpose`` (and carrying ``hint``) when the .onnx files or insightface and
            onnxruntime are missing.
    """
    model_dir = Path(root) / "models" / model_name
    if not any(model_dir.glob("*.onnx")):
        what = f"{purpose} needs insightface's {model_name} .onnx files in {model_dir}"
        raise WeightsError(what, hint=hint)
    try:
        insightface_app = importlib.import_module("insightface.app")
    except ImportError as error:
        raise WeightsError(
            f"{purpose} needs insightface and onnxruntime: pip install 'portrait[faces]'", hint=hint
        ) from error
    app = insightface_app.FaceAnalysis(
        name=model_name, root=str(root), allowed_modules=list(modules), providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=-1, det_size=det_size)
    return app


class InsightFaceDetector:
    """insightface ``FaceAnalysis`` detector loaded from ``root/models/<name>/*.onnx`` (no download)."""

    name = "insightface"

    def __init__(
        self, root: Path, model_name: str = INSIGHTFACE_MODEL, det_size: tuple[int, int] = (640, 640)
    ) -> None:
        self._app = insightface_analysis(
            root, ["detection"], "the insightface detector", model_name, det_size, hint=HINT_DLIB_DETECTOR
        )

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        _check_bgr(image_bgr)
        faces = []
        for found in self._app.get(image_bgr):
            x1, y1, x2, y2 = (float(v) for v in found.bbox)
            kps = getattr(found, "kps", None)
            faces.append(Face((x1, y1, x2 - x1, y2 - y1), float(found.det_score), kps))
        return sorted(faces, key=lambda f: -f.score)


def detector_from_name(
    name: str,
    weights_root: Path | None,
    *,
    device: str | torch.device = "cpu",
    yolo_sha256: str | Collection[str] | None = None,
) -> FaceDetector:
    """Build a detector: ``"yolo"``, ``"insightface"``, ``"dlib"`` or ``"auto"``.

    ``"auto"`` takes YOLO if ``weights_root/face_detector/yoloface_v5m.pt`` exists and its sha256 is on the
    allow-list (:func:`yolo_allow_list` of ``yolo_sha256``), else insightface if
    ``weights_root/insightface/models/buffalo_l/*.onnx`` exist and insightface is installed, else dlib; a
    YOLO file that is not on the list is never loaded (a warning, once, names its digest). ``"yolo"``
    with such a file is a :class:`WeightsError` naming the digest to pass.
    """
    if name not in DETECTOR_NAMES:
        raise ConfigError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}")
    root = Path(weights_root) if weights_root is not None else None
    allowed = yolo_allow_list(yolo_sha256)
    if name == "auto":
        yolo = root / YOLO_WEIGHTS if root is not None else None
        if yolo is not None and yolo.is_file() and _yolo_listed(yolo, allowed):
            name = "yolo"
        elif (
            root is not None
            and any((root / INSIGHTFACE_ROOT / "models" / INSIGHTFACE_MODEL).glob("*.onnx"))
            and importlib.util.find_spec("insightface") is not None
        ):
            name = "insightface"
        else:
            name = "dlib"
        logger.info("face detector: %s", name)
    if name == "dlib":
        return DlibDetector()
    if root is None:
        raise WeightsError(f"the {name} face detector needs a weights root (--weights or PORTRAIT_WEIGHTS)")
    if name == "yolo":
        return YoloFaceDetector(root / YOLO_WEIGHTS, device=device, expected_sha256=allowed)
    return InsightFaceDetector(root / INSIGHTFACE_ROOT)
