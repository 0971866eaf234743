"""Training checkpoints for :class:`TrainLoop`: a module, its optimizer and schedule, and the
loop state, written through :mod:`pyvene_like.serialization`'s checkpoint layout.

The folder holds ``checkpoint.json`` (the loop state, the optimizer's param groups and plain
values, the schedule's state, and each tensor file's sha256) and two tensor files,
``checkpoint-interventions.safetensors`` (the trained module's weights; tensors shared by linked
modules are stored once) and ``checkpoint-optimizer.safetensors`` (the optimizer's tensors, keyed
``<param id>.<name>``). The names differ from ``save_pretrained``'s, so a checkpoint folder is
never mistaken for a saved intervention.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..errors import LoadError
from ..serialization import read_checkpoint as read_folder
from ..serialization import write_checkpoint as write_folder

_GROUPS = ("interventions", "optimizer")


def write_checkpoint(path: str | os.PathLike, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: LRScheduler | None, state: dict) -> Path:
    """Write ``module``'s weights, the optimizer and schedule, and ``state`` to folder ``path``."""
    opt = optimizer.state_dict()
    tensors, plain = {}, {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                plain[f"{pid}.{name}"] = v
    weights = {k: v.detach() for k, v in module.state_dict(keep_vars=True).items()}
    meta = {
        "trainer_state": state,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_plain_state": plain,
        "scheduler": scheduler.state_dict() if hasattr(scheduler, "state_dict") else None,
    }
    return write_folder(path, {"interventions": weights, "optimizer": tensors}, meta)


def read_checkpoint(path: str | os.PathLike, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: LRScheduler | None, device: torch.device | str | None) -> dict:
    """Load a folder written by :func:`write_checkpoint` into ``module``, ``optimizer`` and
    ``scheduler``; return the saved loop state. Errors name the folder and what is wrong."""
    tensors, meta = read_folder(path, list(_GROUPS))
    try:
        missing, unexpected = module.load_state_dict(
            {k: v.to(device) for k, v in tensors["interventions"].items()}, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}")
    except RuntimeError as e:
        raise LoadError(f"resume_from_checkpoint: the saved interventions do not fit this model's: {e}") from None
    try:
        state: dict = {}
        for key, v in list(tensors["optimizer"].items()) + list(meta["optimizer_plain_state"].items()):
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        if meta.get("scheduler") is not None and hasattr(scheduler, "load_state_dict"):
            scheduler.load_state_dict(meta["scheduler"])
        return meta["trainer_state"]
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise LoadError(f"resume_from_checkpoint: cannot read {str(Path(path))!r}: {type(e).__name__}: {e}") from None
