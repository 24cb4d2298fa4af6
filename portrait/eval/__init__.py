"""Evaluation of rendered videos (layer 3): metrics, the JSON line per video, the HTML/PNG report, emotion QA.

- ``evaluate``: every metric of one video (``evaluate_video``), the JSON line of ``portrait-gen eval``.
- ``report``: ``report.html`` with its plots.
- ``toolkit``: the models an evaluation uses, gathered once (``EvalTools``, ``default_tools``).
- ``observe``: one decoding pass over a video; ``faces``: its face track.
- ``identity``: CSIM. ``emotion_accuracy``: expression accuracy and confidence against the request.
- ``sync``: MFCC, SyncNet windows and offsets, and the offline lip-sync proxy; ``lse``: LSE-C / LSE-D under
  the two reference protocols; ``sync_tracks``: syncnet_python's face tracks and crops.
- ``features``: the FID Inception and FVD I3D feature extractors; ``sets``: a set of videos, with pooled
  FID / FVD; ``protocol``: what each number's protocol records.
- ``motion``: head-pose jitter, landmark velocity, blinks, background flicker, LMD.
- ``frechet``: Fréchet distance over image features. ``metric``: the one shape of every metric.
- ``qa``: closed-loop emotion QA (render, measure, re-render with stronger emotion guidance).

See docs/evaluation.md.
"""
