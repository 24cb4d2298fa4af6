"""The ComfyUI node pack (layer 4, like ``cli``, ``batch`` and ``app``): nothing in the package imports it.

- ``nodes``: the five nodes on ComfyUI's V3 API and ``comfy_entrypoint`` (imported by ComfyUI only, through
  the repository's root ``__init__.py``).
- ``schemas``: the nodes' widgets (the CLI's defaults) and the pack's category.
- ``render``: Portrait Render's work: ComfyUI values → job + config → ``render_job`` → frames and audio.
- ``analysis``: Portrait Motion Track, Emotion From Reference and Evaluate: frames → the CLI's file paths.
- ``engines``: the Loader's engine handle, loaded once per settings and released when ComfyUI frees memory.
- ``convert``: ComfyUI ``IMAGE`` / ``AUDIO`` ↔ lossless files and frames (pure, no ComfyUI import).
- ``messages``: a library error as one line in ComfyUI's error panel.
- ``workflow_format``: the example workflows' API format ↔ the editor's UI format.
"""
