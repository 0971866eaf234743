"""Training checkpoints: the one place that writes and reads them (called by :class:`TrainLoop`).

A checkpoint folder holds ``interventions.safetensors`` (the trained module's weights;
``save_model`` stores tensors shared by linked modules once), ``optimizer.safetensors`` (the
optimizer's tensors, keyed ``<param id>.<name>``) and ``trainer_state.json`` (the loop state,
the optimizer's param groups and plain values, the schedule's state).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import LoadError

WEIGHTS, OPTIMIZER, STATE = "interventions.safetensors", "optimizer.safetensors", "trainer_state.json"


def write_checkpoint(path, module: torch.nn.Module, optimizer, scheduler, state: dict) -> Path:
    """Write ``module``'s weights, the optimizer and schedule, and ``state`` to folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(module, str(path / WEIGHTS))
    opt = optimizer.state_dict()
    tensors, plain = {}, {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                plain[f"{pid}.{name}"] = v
    save_file(tensors, str(path / OPTIMIZER))
    meta = {
        "trainer_state": state,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_plain_state": plain,
        "scheduler": scheduler.state_dict() if hasattr(scheduler, "state_dict") else None,
    }
    (path / STATE).write_text(json.dumps(meta, indent=1, default=float))
    return path


def read_checkpoint(path, module: torch.nn.Module, optimizer, scheduler, device) -> dict:
    """Load a folder written by :func:`write_checkpoint` into ``module``, ``optimizer`` and
    ``scheduler``; return the saved loop state. Errors name the folder and what is wrong."""
    path = Path(path)
    files = [path / WEIGHTS, path / OPTIMIZER, path / STATE]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise LoadError(f"resume_from_checkpoint: {str(path)!r} lacks {missing}; expected a folder written by save_checkpoint")
    try:
        opt_tensors = load_file(str(files[1]))
        meta = json.loads(files[2].read_text())
    except Exception as e:  # a truncated or foreign file
        raise LoadError(f"resume_from_checkpoint: cannot read {str(path)!r}: {type(e).__name__}: {e}") from None
    try:
        load_model(module, str(files[0]), device=str(device))
    except Exception as e:
        raise LoadError(f"resume_from_checkpoint: the saved interventions do not fit this model's: {e}") from None
    state: dict = {}
    for key, v in list(opt_tensors.items()) + list(meta["optimizer_plain_state"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    if meta.get("scheduler") is not None and hasattr(scheduler, "load_state_dict"):
        scheduler.load_state_dict(meta["scheduler"])
    return meta["trainer_state"]
