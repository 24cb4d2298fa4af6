"""Landmark-guided motion control: landmarks, tracks, retargeting and motion maps (layer 1).

Modules, in data-flow order:

- ``landmarks``: the :class:`~portrait.motion.landmarks.Landmarker` protocol (68 iBUG 300-W points) and its
  dlib / face-alignment / insightface implementations, plus the point groups and openness measures.
- ``pose``: the generic 3D 68-point face, head pose by ``cv2.solvePnP`` and 2D similarity transforms.
- ``smooth``: One-Euro and Savitzky-Golay filters used on tracks.
- ``follow``: one face followed through frames (detection, matching, box propagation, plausibility).
- ``track``: a driving video (or any frame iterator) → :class:`~portrait.motion.track.Track`, streamed.
- ``track_io``: strict JSON reading and atomic writing of tracks.
- ``retarget``: driving landmarks → the portrait's face (``relative``, ``offset``, ``naive``, ``fixed``),
  resampling to the generation rate and extension (``pingpong``, ``hold``).
- ``maps``: landmarks → (F, 3, H, W) float32 motion maps in [0, 1].
- ``plot``: head pose and mouth opening over time → PNG.
- ``bucket``: per-frame head-motion energy → SVD motion-bucket table (the release-weights-only path).
- ``driving``: the one call of the generate path (:func:`~portrait.motion.driving.motion_for_job`) and of
  the ``motion extract`` command (:func:`~portrait.motion.driving.extract_to_files`).

Nothing here imports ``portrait.models`` or a config object; detectors and landmarkers come in as
arguments typed by protocols.
"""
