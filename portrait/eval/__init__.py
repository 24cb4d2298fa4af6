"""Evaluation of rendered videos (layer 3): metrics, the JSON line per video, the HTML/PNG report, emotion QA.

- ``evaluate``: every metric of one video (``evaluate_video``), the JSON line of ``portrait-gen eval``.
- ``report``: ``report.html`` with its plots.
- ``toolkit``: the models an evaluation uses, gathered once (``EvalTools``, ``default_tools``).
- ``observe``: one decoding pass over a video; ``faces``: its face track and face crops.
- ``identity``: CSIM. ``emotion_accuracy``: expression accuracy and confidence against the request.
- ``sync``: Sync-C / Sync-D with SyncNet and the offline lip-sync proxy.
- ``motion``: head-pose jitter, landmark velocity, blinks, background flicker, LMD.
- ``frechet``: Fréchet distance over image features. ``metric``: the one shape of every metric.
- ``qa``: closed-loop emotion QA (render, measure, re-render with stronger emotion guidance).

See docs/evaluation.md.
"""
