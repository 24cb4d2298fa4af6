"""The Gradio web demo (layer 4, ``portrait-gen app`` / ``python app.py``): nothing in the package imports it.

- ``ui``: the page (widgets and events, the ``/generate`` endpoint) and ``serve`` / ``main``.
- ``launch``: the launcher's flags, exposure warnings, weights check and engine start.
- ``handler``: :class:`~portrait.app.handler.Studio`, one loaded engine serving the page's renders.
- ``request``: the page's values → job fields and config values, with their checks (light imports).
- ``present``: what the page shows: face-box preview, info panel, one-line messages, the public sidecar.
- ``emotion_reference``: "Emotion from a reference" fields and "Save as emotion".
- ``workspace``: the private temporary folder of one app process.
"""
