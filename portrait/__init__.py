"""portrait: diffusion-based emotional talking-portrait video generation (DICE-Talk compatible).

A render in four calls::

    import portrait

    cfg = portrait.load_config(values={"runtime.weights": "weights"})
    engine = portrait.load_engine(cfg)                       # every model, once
    job = portrait.Job(Path("face.png"), Path("speech.wav"), Path("talk.mp4"), emotion="happy")
    prepared = portrait.prepare(job, cfg, engine.detector, engine.bank)   # inputs decoded and checked
    result = portrait.render_job(prepared, engine, cfg)      # talk.mp4 + talk.mp4.json

Importing the package is cheap: the names below are loaded on first use (torch and diffusers only then).
No public name is also the name of a module of the package (``portrait.generate`` is the module of the
single-render step, :func:`render_job` the entry point). ``python -m portrait`` is the ``portrait-gen``
command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that defines it (imported on first access).
_PUBLIC: dict[str, str] = {
    "RenderConfig": "portrait.config",
    "load_config": "portrait.config",
    "with_values": "portrait.config",
    "PortraitError": "portrait.errors",
    "InputError": "portrait.errors",
    "WeightsError": "portrait.errors",
    "Engine": "portrait.engine",
    "load_engine": "portrait.engine",
    "Job": "portrait.inputs",
    "PreparedJob": "portrait.inputs",
    "prepare": "portrait.inputs",
    "Conditions": "portrait.conditioning",
    "encode": "portrait.conditioning",
    "Result": "portrait.generate",
    "render_job": "portrait.rendering",
    "QASettings": "portrait.eval.qa",
    "PortraitPipeline": "portrait.pipeline",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'portrait' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
