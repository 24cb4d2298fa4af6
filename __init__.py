"""ComfyUI entry point of portrait's node pack: ComfyUI imports ``custom_nodes/<this clone>/__init__.py``.

The nodes live in the installed package (``portrait/comfy/``); this file only hands them to ComfyUI. It is
not part of the wheel. Outside ComfyUI (pytest imports a root ``__init__.py`` while collecting) it does
nothing: ComfyUI has imported its ``comfy_api`` before it loads custom nodes.
"""

import sys

if "comfy_api" in sys.modules:
    try:
        from portrait.comfy.nodes import comfy_entrypoint
    except ModuleNotFoundError as err:  # the clone is there but the package is not in ComfyUI's Python
        if err.name != "portrait":
            raise
        raise ImportError(
            "portrait's ComfyUI nodes need the package in ComfyUI's Python: run "
            "`python -m pip install -e custom_nodes/<this folder>` with ComfyUI's python"
        ) from err

    __all__ = ["comfy_entrypoint"]
