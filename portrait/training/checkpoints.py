"""Training checkpoints: one folder per step, written atomically, with everything an exact resume needs.

A folder holds ``model.safetensors``, the optimiser's tensors (``optimizer.safetensors``) and scalars,
the RNG states (``rng.safetensors``) and ``state.json`` (step, hyper-parameters, the recipe's identity,
the schedule). No pickle: optimiser state is split into safetensors and JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from portrait.errors import InputError
from portrait.files import write_json_atomic

CHECKPOINTS_DIR = "checkpoints"


def _optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    hyper: dict[str, Any],
    identity: dict[str, Any],
) -> None:
    """Write ``folder`` atomically (temporary folder renamed): model, optimiser, schedule, RNG, step."""
    from safetensors.torch import save_file

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        str(tmp / "model.safetensors"),
    )
    tensors, meta = _optimizer_to_files(optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / "rng.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    write_json_atomic(
        tmp / "state.json",
        {"step": step, "hyper": hyper, "identity": identity, "optimizer": meta, "scheduler": sched},
        indent=1,
        sort_keys=True,
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def latest_checkpoint(out: Path) -> Path | None:
    folders = sorted(p for p in (out / CHECKPOINTS_DIR).glob("step-*") if (p / "state.json").is_file())
    return folders[-1] if folders else None


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer, scheduler, hyper: dict[str, Any], identity: dict[str, Any]
) -> int:
    """Restore a checkpoint; returns its step. Raises InputError naming changed hyper-parameters."""
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    current = json.loads(json.dumps({**hyper, **identity}))
    diff = _differences({**state["hyper"], **state["identity"]}, current)
    if diff:
        raise InputError(f"cannot resume {folder}: the run changed ({'; '.join(diff)}); use a new --out")
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    optimizer.load_state_dict(_optimizer_from_files(tensors, state["optimizer"]))
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count())])
    return int(state["step"])
