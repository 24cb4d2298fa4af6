"""Evaluation of rendered videos (layer 3): metrics, the JSON line per video and the HTML/PNG report.

``evaluate.evaluate_video`` runs everything on one video and ``report.write_report`` writes
``report.html`` with its plots. ``tools`` gathers the models once (``EvalTools``, ``default_tools``);
``observe`` decodes a video once and ``faces`` tracks its face once. One module per family of metrics:
``identity`` (CSIM), ``emotion`` (expression accuracy and confidence), ``sync`` (Sync-C/Sync-D, the
offline lip-sync proxy; weights converted by ``portrait.weights.syncnet``), ``motion`` (head-pose
jitter, landmark velocity, blinks, background flicker, LMD) and ``frechet`` (FD over image features).
``metric`` is the one shape of every metric. See docs/evaluation.md.
"""
