"""Convert the RIFE HDv3 release checkpoint ``flownet.pkl`` into a diffusers-style folder (compat §7.1, 8).

The release file is a ``torch.save``-d state dict of a ``DataParallel``-wrapped IFNet (keys prefixed
``module.``). It is read with ``torch.load(weights_only=True)`` (no pickled code runs), filtered and
renamed exactly like the reference loader (keep keys containing ``module.``, delete every ``module.``),
loaded strictly into :class:`~portrait.models.interpolation.IFNet`, and written as ``config.json`` +
``diffusion_pytorch_model.safetensors``. In the weights tree the folder is ``interpolation/`` (optional:
without it the video stays at 12.5 fps).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from pathlib import Path

import torch

from portrait.errors import WeightsError
from portrait.models.interpolation import IFNet

logger = logging.getLogger(__name__)

#: Key whose first dimension is half the feature width.
CHANNELS_KEY = "block0.conv0.0.0.weight"
_PREFIX = "module."
#: What ``torch.load(weights_only=True)`` raises on refused globals, truncated or foreign files.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    AttributeError,
    TypeError,
)


def _list_keys(keys: Iterable[str], limit: int = 10) -> str:
    """``"a, b, c (+N more)"`` for error messages (sorted, first ``limit``)."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_flownet(src: Path) -> dict[str, torch.Tensor]:
    """Read ``flownet.pkl`` safely and return its IFNet state dict with ``module.`` removed.

    Raises:
        WeightsError: unreadable file, pickled objects other than tensors, not a dict, or no
            ``module.`` keys.
    """
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"{src}: refusing to load: not a plain tensor state dict readable with "
            f"torch.load(weights_only=True) ({first}). Use the original RIFE HDv3 flownet.pkl"
        ) from err
    if not isinstance(obj, dict):
        raise WeightsError(f"{src}: expected a state dict (dict of tensors), found a {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or _PREFIX not in key:
            continue
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{src}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.replace(_PREFIX, "")] = value
    if not state:
        raise WeightsError(
            f"{src}: no key contains {_PREFIX!r}; expected the DataParallel state dict of RIFE HDv3 "
            f"(keys like 'module.{CHANNELS_KEY}')"
        )
    dropped = len(obj) - len(state)
    if dropped:
        logger.info("%s: ignored %d keys without %r", src, dropped, _PREFIX)
    return state


def ifnet_from_state_dict(state: dict[str, torch.Tensor], source: str = "state dict") -> IFNet:
    """Build an :class:`IFNet` sized from ``state`` and load it strictly.

    Raises:
        WeightsError: naming missing, unexpected or mis-shaped keys.
    """
    if CHANNELS_KEY not in state or state[CHANNELS_KEY].ndim != 4:
        raise WeightsError(f"{source}: missing 4-d tensor {CHANNELS_KEY!r}; cannot infer the IFNet width")
    channels = int(state[CHANNELS_KEY].shape[0]) * 2
    model = IFNet(channels=channels, teacher=True)
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list_keys(unexpected)}")
        raise WeightsError(
            f"{source}: not an IFNet (RIFE HDv3) state dict of width {channels}; {'; '.join(parts)}"
        )
    wrong = [
        f"{key} {tuple(state[key].shape)} != {tuple(ref.shape)}"
        for key, ref in expected.items()
        if state[key].shape != ref.shape
    ]
    if wrong:
        raise WeightsError(
            f"{source}: tensor shapes do not match IFNet(channels={channels}): {_list_keys(wrong)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_flownet(src: Path, dst_dir: Path) -> None:
    """Convert a RIFE HDv3 ``flownet.pkl`` into ``config.json`` + safetensors weights in ``dst_dir``.

    Args:
        src: the release checkpoint (``checkpoints/RIFE/flownet.pkl``).
        dst_dir: output folder (``<weights tree>/interpolation``); created if needed.

    Raises:
        WeightsError: the file is unsafe, unreadable or not an HDv3 IFNet state dict.
    """
    src, dst_dir = Path(src), Path(dst_dir)
    model = ifnet_from_state_dict(read_flownet(src), source=str(src))
    dst_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst_dir, safe_serialization=True)
    logger.info(
        "converted %s -> %s (IFNet channels=%d, %d parameters)",
        src,
        dst_dir,
        model.config.channels,
        sum(p.numel() for p in model.parameters()),
    )
