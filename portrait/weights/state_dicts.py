"""Shared steps of the evaluation-network converters: read a published ``.pth`` safely, match it to our
module, write safetensors, load it back hash-checked.

Used by :mod:`portrait.weights.syncnet`, :mod:`portrait.weights.inception` and :mod:`portrait.weights.i3d`.
The published files are plain PyTorch state dicts; :func:`read_published` reads them with
``torch.load(weights_only=True)`` (no arbitrary unpickling) and is the only place a pickle is opened. At run
time only safetensors are read (:func:`read_converted`), after their sha256 is checked when one is known.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from portrait.errors import WeightsError
from portrait.files import sha256_file

logger = logging.getLogger(__name__)

Net = TypeVar("Net", bound=torch.nn.Module)
#: ``(name, tensor, expected) → tensor``: fixes a known layout difference of one tensor (or returns it as is).
Adapt = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Converted:
    """A converted weights file read back: its tensors, its sha256 and the published file's (metadata)."""

    state: dict[str, torch.Tensor]
    sha256: str
    source_sha256: str | None
    verified: bool


def read_published(src: Path, what: str, where: str, prefixes: Iterable[str] = ("module.",)) -> dict:
    """The tensors of a published ``.pth`` state dict (``torch.load(weights_only=True)``), prefixes removed.

    Args:
        src: the file. what: its name in messages. where: where it is published (said when it is missing).
        prefixes: key prefixes to strip (``DataParallel``'s ``module.``, a wrapper's ``__S__.``).

    Raises:
        WeightsError: the file is missing, refused by the safe unpickler, or not a dict of tensors.
    """
    src = Path(src)
    if not src.is_file():
        raise WeightsError(f"{what} {src} not found: download it from {where}")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any refusal of the safe unpickler is the same user problem
        raise WeightsError(f"{src} is not a plain PyTorch state dict ({what}): {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{src} is not a state dict of tensors ({what})")
    out = {}
    for key, tensor in state.items():
        name = str(key)
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        out[name] = tensor
    return out


def match_state(
    state: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    what: str,
    *,
    ignore: Iterable[str] = (),
    adapt: Adapt | None = None,
) -> dict[str, torch.Tensor]:
    """``state`` checked tensor by tensor against ``reference`` (our module's state dict), cast to its dtypes.

    Keys starting with an ``ignore`` prefix are dropped (e.g. a classifier FID never uses). A missing
    ``num_batches_tracked`` buffer (older files) becomes zero.

    Raises:
        WeightsError: an unexpected, missing or mis-shaped tensor (named).
    """
    skip = tuple(ignore)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if skip and name.startswith(skip):
            continue
        if name not in reference:
            raise WeightsError(f"{what}: unexpected tensor {name!r}")
        expected = reference[name]
        if adapt is not None:
            tensor = adapt(name, tensor, expected)
        if tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsError(
                f"{what}: {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}"
            )
        out[name] = tensor.to(expected.dtype).contiguous()
    for name, tensor in reference.items():
        if name not in out:
            if not name.endswith("num_batches_tracked"):
                raise WeightsError(f"{what}: missing tensor {name!r}")
            out[name] = torch.zeros_like(tensor, device="cpu")
    return out


def write_converted(dst: Path, state: Mapping[str, torch.Tensor], source_sha256: str) -> str:
    """Write ``state`` to ``dst`` as safetensors (via a temporary name); returns the written file's sha256."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        save_file(dict(state), str(partial), metadata={"source_sha256": source_sha256})
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return sha256_file(dst)


def read_converted(path: Path, expected_sha256: str | None, what: str, fix: str) -> Converted:
    """The tensors of a converted safetensors file, after its sha256 is checked against ``expected_sha256``.

    Without ``expected_sha256`` it loads with a warning that the file is unverified.

    Raises:
        WeightsError: missing file (``fix`` says how to make it) or a hash mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} weights {path} not found: {fix}")
    digest = sha256_file(path)
    if expected_sha256 is None:
        logger.warning("loading unverified %s weights %s (sha256 %s)", what, path, digest)
    elif digest != expected_sha256.lower():
        raise WeightsError(f"{what} weights {path} have sha256 {digest}, expected {expected_sha256}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - a corrupt or foreign file, whatever the parser says
        raise WeightsError(f"{path} is not a safetensors file ({what}): {error}") from error
    return Converted(state, digest, metadata.get("source_sha256"), expected_sha256 is not None)


def check_prefix(src: Path, prefix: str | None, what: str) -> str:
    """The sha256 of ``src``; it must start with ``prefix`` (the published file's recorded digest prefix).

    Raises:
        WeightsError: a different digest (not the published file).
    """
    digest = sha256_file(src)
    if prefix is not None and not digest.startswith(prefix):
        raise WeightsError(
            f"{src} has sha256 {digest}; the published {what} starts with {prefix}: download the file again "
            "(or convert with check_release_hash=False a file you trust that is not the published one)"
        )
    return digest


def provenance(path: Path, expected_sha256: str | None = None) -> dict[str, object]:
    """What a protocol records of a converted file: name, sha256, the published file's sha256, verified."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    digest = sha256_file(path)
    verified = expected_sha256 is not None and digest == expected_sha256.lower()
    return {
        "file": path.name,
        "sha256": digest,
        "source_sha256": metadata.get("source_sha256"),
        "verified": verified,
    }


def load_network(
    path: Path,
    expected_sha256: str | None,
    what: str,
    fix: str,
    build: Callable[[Mapping[str, torch.Tensor]], Net],
    device: str | torch.device = "cpu",
) -> Net:
    """A network from a converted file: hash-checked (:func:`read_converted`), built by ``build(state)``
    (which reads its sizes from the tensors), loaded strictly, in eval mode on ``device``.

    Raises:
        WeightsError: missing file (``fix`` says how to make it), hash mismatch, a tensor ``build`` needs is
            absent, or tensors that do not fit the architecture.
    """
    state = read_converted(Path(path), expected_sha256, what, fix).state
    try:
        net = build(state)
    except KeyError as error:
        raise WeightsError(f"{path} is not a {what} file: missing {error}") from error
    net.load_state_dict(match_state(state, net.state_dict(), f"{what} weights"), strict=True)
    return net.eval().to(device)
