"""The face tracks and 224² face crops of syncnet_python's ``run_pipeline.py``, the input of LSE-C / LSE-D.

The rules of the reference pipeline (``track_shot`` and ``crop_video``), reimplemented as pure functions on
boxes that any detector produced (the reference uses S3FD, whose weights portrait does not ship):

1. **Linking** (:func:`link_detections`): greedy passes over the frames; a pass starts a track with the first
   detection it meets and appends every later detection whose IoU with the track's last box exceeds 0.5,
   until more than ``max_gap`` (25) frames pass without one. Linked detections leave the pool; passes repeat
   until one links nothing. As in the reference, taking a detection out of a frame's list skips the detection
   after it in that pass (it stays in the pool for the next pass).
2. **Keeping** (:func:`face_tracks`): a track needs more than ``min_track`` (100) detections; its boxes are
   interpolated linearly over the missing frames, and its mean box width or height must exceed
   ``min_face_size`` (100 px, in the video's own resolution).
3. **Smoothing** (:func:`smooth_track`): box centre x, y and half-size ``s = max(w, h) / 2`` are each median
   filtered over 13 frames (``scipy.signal.medfilt``, which pads the ends with zeros).
4. **Cropping** (:func:`crop_window`, :func:`crop_face`): with ``c = crop_scale`` (0.4) the crop spans
   ``[y − s, y + s(1 + 2c))`` × ``[x − s(1 + c), x + s(1 + c))``: a square of side ``2s(1 + c)``, 1.4× the
   box, its centre ``c·s`` (0.2 of the box side) below the box centre; corners truncated to integers as the
   reference slices its padded frame; outside the frame the colour is grey 110; resized to 224² with OpenCV's
   bilinear ``cv2.resize``.

Frames outside every kept track are not scored. Not reproduced: the scene-cut detection of PySceneDetect (a
cut inside one video usually breaks the IoU link anyway), the detector and its 0.25 down-scale, and the lossy
XVID/JPEG round trips of the reference's intermediate files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from portrait.boxes import iou

#: ``(x1, y1, x2, y2)`` float corners of a detection in the video's pixels.
Corners = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackRules:
    """The parameters of syncnet_python's ``run_pipeline.py`` (its defaults).

    Attributes:
        min_track: a track needs more detections than this (``--min_track``).
        max_gap: frames a track may go without a detection (``--num_failed_det``).
        min_face_size: the track's mean box width or height must exceed this, pixels (``--min_face_size``).
        iou_threshold: least IoU with the track's last box to link a detection.
        crop_scale: margin of the crop (``--crop_scale``). smooth_kernel: median filter length.
        crop_size: side of the crops SyncNet sees. pad_value: grey level outside the frame.
    """

    min_track: int = 100
    max_gap: int = 25
    min_face_size: float = 100.0
    iou_threshold: float = 0.5
    crop_scale: float = 0.4
    smooth_kernel: int = 13
    crop_size: int = 224
    pad_value: int = 110

    def describe(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SyncTrack:
    """One kept face track: consecutive frame indices and their (interpolated) boxes.

    Attributes:
        frames: ``(N,)`` int, ``first .. last``. boxes: ``(N, 4)`` float corners.
        detections: how many frames had a detection (the rest were interpolated).
    """

    frames: np.ndarray
    boxes: np.ndarray
    detections: int

    @property
    def first(self) -> int:
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])


def _overlap(a: Corners, b: Corners) -> float:
    return iou((a[0], a[1], a[2] - a[0], a[3] - a[1]), (b[0], b[1], b[2] - b[0], b[3] - b[1]))


def link_detections(
    detections: Sequence[Sequence[Corners]], rules: TrackRules
) -> list[list[tuple[int, Corners]]]:
    """Every linked run of detections, ``[(frame, corners), ...]`` in order (step 1 of the module)."""
    pool = [list(faces) for faces in detections]
    runs: list[list[tuple[int, Corners]]] = []
    while True:
        run: list[tuple[int, Corners]] = []
        for frame, faces in enumerate(pool):
            i = 0
            while i < len(faces):
                box = faces[i]
                if run and frame - run[-1][0] > rules.max_gap:
                    break
                if not run or _overlap(box, run[-1][1]) > rules.iou_threshold:
                    run.append((frame, box))
                    del faces[i]  # the next detection slides into index i and is skipped, as in the reference
                i += 1
        if not run:
            return runs
        runs.append(run)


def face_tracks(detections: Sequence[Sequence[Corners]], rules: TrackRules) -> list[SyncTrack]:
    """The kept tracks of a video (steps 1–2 of the module).

    Args:
        detections: per frame, the corners of every face found in it (any order).
    """
    from scipy.interpolate import interp1d

    tracks = []
    for run in link_detections(detections, rules):
        if len(run) <= rules.min_track:
            continue
        numbers = np.array([frame for frame, _ in run])
        boxes = np.array([box for _, box in run], dtype=np.float64)
        frames = np.arange(numbers[0], numbers[-1] + 1)
        filled = np.stack([interp1d(numbers, boxes[:, k])(frames) for k in range(4)], axis=1)
        size = max(np.mean(filled[:, 2] - filled[:, 0]), np.mean(filled[:, 3] - filled[:, 1]))
        if size > rules.min_face_size:
            tracks.append(SyncTrack(frames, filled, len(run)))
    return tracks


def smooth_track(track: SyncTrack, rules: TrackRules) -> np.ndarray:
    """``(N, 3)`` median-filtered centre x, centre y and half-size s of a track's boxes (step 3)."""
    from scipy.signal import medfilt

    b = track.boxes
    half = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    centre_y, centre_x = (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2
    columns = [medfilt(v, kernel_size=rules.smooth_kernel) for v in (centre_x, centre_y, half)]
    return np.stack(columns, axis=1)


def crop_window(x: float, y: float, s: float, crop_scale: float) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a crop in frame pixels (bottom/right exclusive; may pass the border).

    The reference pads the frame by ``int(s(1 + 2c))`` pixels on every side and truncates the corners in
    those padded coordinates; this returns the same pixels in unpadded ones.
    """
    pad = int(s * (1 + 2 * crop_scale))
    my, mx = y + pad, x + pad
    rows = int(my - s), int(my + s * (1 + 2 * crop_scale))
    cols = int(mx - s * (1 + crop_scale)), int(mx + s * (1 + crop_scale))
    return rows[0] - pad, rows[1] - pad, cols[0] - pad, cols[1] - pad


def crop_face(frame: np.ndarray, window: tuple[int, int, int, int], rules: TrackRules) -> np.ndarray:
    """The ``(crop_size, crop_size, 3)`` uint8 crop of ``frame`` (H, W, 3) in ``window``, grey outside it."""
    import cv2

    top, bottom, left, right = window
    height, width = frame.shape[:2]
    canvas = np.full((max(bottom - top, 1), max(right - left, 1), 3), rules.pad_value, dtype=np.uint8)
    y0, y1, x0, x1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    if y1 > y0 and x1 > x0:
        canvas[y0 - top : y1 - top, x0 - left : x1 - left] = frame[y0:y1, x0:x1]
    return cv2.resize(canvas, (rules.crop_size, rules.crop_size))
