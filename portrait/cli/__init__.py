"""The ``portrait-gen`` command line (layer 4): parsing imports nothing heavy; each command's ``run`` does.

- ``main``: the command table, the top-level parser, logging set-up and exit codes.
- ``common``: what every command shares: runtime flags, logging, error lines.
- ``generate``: the default command, one render.
- ``download``: ``download`` (the public weights) and ``convert`` (the research release).
- ``doctor``: the checklist of ffmpeg, weights tree, device and versions.
- ``emotions``: list the emotion bank, classify an expression, add or remove custom entries.
- ``evaluate``: ``eval``, the metrics of rendered videos.
- ``motion``: ``motion extract``, a landmark track from a driving video.
- ``train``: ``train prepare|embedder|motion|install``.
"""
