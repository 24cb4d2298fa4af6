"""The Portrait Loader's engine handle: loaded once per settings, released when ComfyUI frees memory.

A :class:`EngineHandle` is what flows along the ``PORTRAIT_ENGINE`` wire. It keeps the runtime config
and loads :func:`portrait.engine.load_engine` on first use; :func:`handle_for` gives every Loader with
the same settings the same handle, so queue runs reuse one engine. ComfyUI has no unload callback for
custom nodes: :func:`install_unload_hooks` wraps its ``unload_all_models`` (the "Unload models" / ``/free``
request, and its answer to an out-of-memory error) and ``free_memory`` (called before it loads a model);
either releases the engines on that device, and the next render loads them again.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from portrait.config import RenderConfig, load_config

if TYPE_CHECKING:
    from portrait.engine import Engine

logger = logging.getLogger(__name__)

#: Attribute that marks a ComfyUI function already wrapped by :func:`install_unload_hooks`.
_HOOK_MARK = "_portrait_unload_hook"


@dataclass(frozen=True)
class LoaderSettings:
    """The Portrait Loader's widgets (``runtime.*`` config keys; None or "" keeps the default)."""

    weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    detector: str = "auto"
    offload: str = "none"
    compile: str = "off"
    fast_attention: bool = True
    window_batch: int = 1

    def config(self) -> RenderConfig:
        """The runtime config of these settings, merged and validated as the CLI's flags are."""
        return load_config(
            values={
                "runtime.weights": self.weights or None,
                "runtime.device": self.device,
                "runtime.dtype": self.dtype,
                "runtime.offload": self.offload,
                "runtime.compile": self.compile,
                "runtime.fast_attention": self.fast_attention,
                "runtime.window_batch": self.window_batch,
            }
        )


@dataclass(eq=False)
class EngineHandle:
    """A lazily loaded engine for one :class:`LoaderSettings` (the ``PORTRAIT_ENGINE`` value).

    ``loader`` builds the engine from the config and the detector name (default: weights check, then
    :func:`portrait.engine.load_engine`, as the CLI does).
    """

    settings: LoaderSettings
    cfg: RenderConfig
    loader: Callable[[RenderConfig, str], Engine] | None = None
    _engine: Engine | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def engine(self) -> Engine:
        """The loaded engine (loaded now when it is not, e.g. after a release)."""
        with self._lock:
            if self._engine is None:
                load = self.loader or load_checked_engine
                self._engine = load(self.cfg, self.settings.detector)
            return self._engine

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def device_type(self) -> str | None:
        """``"cuda"``, ``"cpu"``, ... of the loaded engine (None when it is not loaded)."""
        engine = self._engine
        return None if engine is None else engine.device.type

    def release(self) -> bool:
        """Drop the loaded engine (its memory goes back once nothing else holds it); True if one was."""
        with self._lock:
            had, self._engine = self._engine is not None, None
        if had:
            logger.info(
                "portrait: released the engine of %s", self.cfg.runtime.weights or "the default weights"
            )
        return had


_handles: weakref.WeakValueDictionary[LoaderSettings, EngineHandle] = weakref.WeakValueDictionary()
_handles_lock = threading.Lock()


def handle_for(
    settings: LoaderSettings, loader: Callable[[RenderConfig, str], Engine] | None = None
) -> EngineHandle:
    """The live handle of ``settings`` (one per settings while ComfyUI holds it), else a new one."""
    cfg = settings.config()  # validate now: a bad setting fails at the Loader, not at the first render
    with _handles_lock:
        handle = _handles.get(settings)
        if handle is None:
            handle = EngineHandle(settings, cfg, loader)
            _handles[settings] = handle
        return handle


def release_engines(device_type: str | None = None) -> int:
    """Release every loaded engine (on ``device_type`` only, when given); returns how many were."""
    with _handles_lock:
        handles = list(_handles.values())
    released = sum(
        handle.release() for handle in handles if device_type is None or handle.device_type() == device_type
    )
    if released:
        gc.collect()
        _empty_cuda_cache()
    return released


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_checked_engine(cfg: RenderConfig, detector: str) -> Engine:
    """The CLI's order: the weights tree (downloaded when missing, unless offline), then every model."""
    from portrait.engine import load_engine
    from portrait.weights.hub import ensure_weights
    from portrait.weights.load import resolve_weights_root

    root = resolve_weights_root(cfg.runtime.weights)
    ensure_weights(root, offline=cfg.runtime.offline or None, progress=False)  # None: $HF_HUB_OFFLINE
    return load_engine(cfg, detector=detector)


def install_unload_hooks(
    model_management: ModuleType, free_bytes: Callable[[Any], float] | None = None
) -> None:
    """Wrap ComfyUI's ``unload_all_models`` and ``free_memory`` (once) so they also release our engines.

    ``unload_all_models()`` releases every engine. ``free_memory(required, device)`` releases the
    engines on that device when ComfyUI's own unloading left less than ``required`` bytes free
    (``free_bytes(device)``, default ComfyUI's ``get_free_memory``).
    """
    unload_all = model_management.unload_all_models
    if not getattr(unload_all, _HOOK_MARK, False):

        def unload_all_models(*args: Any, **kwargs: Any) -> Any:
            result = unload_all(*args, **kwargs)
            release_engines()
            return result

        setattr(unload_all_models, _HOOK_MARK, True)
        model_management.unload_all_models = unload_all_models
    free = model_management.free_memory
    if not getattr(free, _HOOK_MARK, False):
        measure = free_bytes or model_management.get_free_memory

        def free_memory(memory_required: float, device: Any, *args: Any, **kwargs: Any) -> Any:
            result = free(memory_required, device, *args, **kwargs)
            if measure(device) < memory_required:
                release_engines(getattr(device, "type", None))
            return result

        setattr(free_memory, _HOOK_MARK, True)
        model_management.free_memory = free_memory
