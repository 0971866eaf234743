"""Training checkpoints for :class:`TrainLoop`: a module, its optimizer and schedule, and the
loop state, written through :mod:`pyvene_like.serialization`'s checkpoint layout.

The folder holds ``checkpoint.json`` (the loop state, the optimizer's param groups and plain
values, the schedule's state, and each tensor file's sha256) and two tensor files,
``checkpoint-interventions.safetensors`` (the trained module's weights; tensors shared by linked
modules are stored once) and ``checkpoint-optimizer.safetensors`` (the optimizer's tensors, keyed
``<param id>.<name>``). The names differ from ``save_pretrained``'s, so a checkpoint folder is
never mistaken for a saved intervention.

Reading is all or nothing: everything in the folder is checked against the module, optimizer,
schedule and loop state it is loaded into before any of them changes (names, shapes, dtypes,
the optimizer's and schedule's kinds and settings, the loop counters), and should loading still
fail, all three are put back as they were.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from itertools import chain
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..errors import LoadError
from ..serialization import read_checkpoint as read_folder
from ..serialization import write_checkpoint as write_folder
from ..validation import is_int

_GROUPS = ("interventions", "optimizer")
_META = ("trainer_state", "optimizer_param_groups", "optimizer_plain_state", "scheduler")
# Optimizer state tensors that are one value per parameter entry (torch's optimizers): their
# shape must be the parameter's.
_PER_PARAMETER = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg",
                  "acc_delta", "sum", "ax", "prev", "step_size", "eta", "mu"}


def _inner(optimizer):
    """The torch optimizer (accelerate wraps it)."""
    return getattr(optimizer, "optimizer", optimizer)


def _kind(obj) -> str:
    return type(getattr(obj, "scheduler", obj)).__name__


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
        "optimizer_class": _kind(_inner(optimizer)),
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_plain_state": plain,
        "scheduler_class": _kind(scheduler) if hasattr(scheduler, "state_dict") else None,
        "scheduler": scheduler.state_dict() if hasattr(scheduler, "state_dict") else None,
    }
    return write_folder(path, {"interventions": weights, "optimizer": tensors}, meta)


def read_checkpoint(path: str | os.PathLike, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: LRScheduler | None, device: torch.device | str | None,
                    state_like: dict | None = None) -> dict:
    """Load a folder written by :func:`write_checkpoint` into ``module``, ``optimizer`` and
    ``scheduler``; return the saved loop state (checked against ``state_like``, the loop's own
    state, when given). Errors name the folder and what is wrong; on an error nothing changed."""
    tensors, meta = read_folder(path, list(_GROUPS))
    where = f"resume_from_checkpoint: {str(Path(path))!r}"
    absent = [k for k in _META if k not in meta]
    if absent:
        raise LoadError(f"{where}: checkpoint.json's state lacks {absent}; it was not written by save_checkpoint")
    weights = _check_weights(where, tensors["interventions"], module)
    opt_state = _check_optimizer(where, tensors["optimizer"], meta, optimizer)
    sched_state = _check_scheduler(where, meta, scheduler)
    state = _check_state(where, meta["trainer_state"], state_like)

    # Everything fits: load, and put all three back should torch still refuse something.
    before = ({k: v.detach().clone() for k, v in module.state_dict().items()},
              copy.deepcopy(optimizer.state_dict()),
              copy.deepcopy(scheduler.state_dict()) if sched_state is not None else None)
    try:
        module.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
        optimizer.load_state_dict(opt_state)
        if sched_state is not None:
            scheduler.load_state_dict(sched_state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        module.load_state_dict(before[0])
        optimizer.load_state_dict(before[1])
        if before[2] is not None:
            scheduler.load_state_dict(before[2])
        raise LoadError(f"{where}: cannot load it: {type(e).__name__}: {e}") from None
    return state


# -- checks, before anything is loaded ---------------------------------------------------------------
def _check_weights(where: str, saved: dict, module: torch.nn.Module) -> dict:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        raise LoadError(
            f"{where}: the saved interventions do not fit this model's: missing keys {missing[:5]}, "
            f"unexpected keys {extra[:5]}; resume with the interventions the checkpoint was trained with"
        )
    for key, t in expected.items():
        got = saved[key]
        if tuple(got.shape) != tuple(t.shape):
            raise LoadError(
                f"{where}: the saved interventions do not fit this model's: size mismatch for {key}: "
                f"the checkpoint has shape {list(got.shape)}, this model's is {list(t.shape)}"
            )
        if got.dtype != t.dtype:
            raise LoadError(
                f"{where}: tensor {key!r} has dtype {got.dtype}; accepted: {t.dtype}, the dtype it is "
                f"trained in (nothing is cast on load)"
            )
    return saved


def _number(v) -> bool:
    return (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)) or (
        isinstance(v, torch.Tensor) and v.numel() == 1 and v.dtype.is_floating_point)


def _same_kind(live, saved) -> bool:
    """Whether a saved param-group setting can stand where the optimizer has ``live``."""
    if live is None:  # flags such as foreach: None or a bool
        return saved is None or isinstance(saved, bool)
    if saved is None:
        return isinstance(live, bool)
    if isinstance(live, bool):
        return isinstance(saved, bool)
    if _number(live):
        return _number(saved)
    if isinstance(live, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(live) and all(
            _same_kind(a, b) for a, b in zip(live, saved))
    return type(saved) is type(live)


def _check_optimizer(where: str, saved_tensors: dict, meta: dict, optimizer) -> dict:
    inner = _inner(optimizer)
    saved_kind, kind = meta.get("optimizer_class"), _kind(inner)
    if saved_kind is not None and saved_kind != kind:
        raise LoadError(f"{where}: the checkpoint was trained with optimizer {saved_kind}, this run uses "
                        f"{kind}; resume with the same optimizer")
    groups = meta["optimizer_param_groups"]
    live_groups = inner.param_groups
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and all(is_int(i) for i in g["params"])
            for g in groups):
        raise LoadError(f"{where}: optimizer_param_groups is {groups!r:.120}; accepted: a list of param "
                        f"groups (dicts with a 'params' list of ids), as optimizer.state_dict() writes")
    if len(groups) != len(live_groups) or any(len(g["params"]) != len(lg["params"])
                                              for g, lg in zip(groups, live_groups)):
        raise LoadError(
            f"{where}: the optimizer has {[len(g['params']) for g in live_groups]} parameters per group, "
            f"the checkpoint {[len(g['params']) for g in groups]}; resume with the interventions (and "
            f"train_model setting) the checkpoint was trained with"
        )
    for i, (g, lg) in enumerate(zip(groups, live_groups)):
        settings = {k for k in lg if k != "params"}
        saved_settings = {k for k in g if k != "params"}
        if settings - saved_settings and saved_settings - settings:
            raise LoadError(
                f"{where}: param group {i} has settings {sorted(saved_settings - settings)} that {kind} "
                f"does not use (and lacks {sorted(settings - saved_settings)}); it was saved with another optimizer"
            )
        for k in settings & saved_settings:
            if not _same_kind(lg[k], g[k]):
                raise LoadError(f"{where}: param group {i} has {k}={g[k]!r}; {kind} takes a value like {lg[k]!r}")
    params = dict(zip(chain.from_iterable(g["params"] for g in groups),
                      chain.from_iterable(lg["params"] for lg in live_groups)))
    plain = meta["optimizer_plain_state"]
    if not isinstance(plain, dict):
        raise LoadError(f"{where}: optimizer_plain_state is {plain!r:.120}; accepted: a dict")
    state: dict = {}
    for key, v in chain(saved_tensors.items(), plain.items()):
        pid, _, name = str(key).partition(".")
        if not (pid.isdigit() and name) or int(pid) not in params:
            raise LoadError(
                f"{where}: optimizer state entry {key!r} names no parameter; accepted: '<id>.<name>' "
                f"with an id of the param groups ({sorted(params)[:8]})"
            )
        p = params[int(pid)]
        if isinstance(v, torch.Tensor):
            if not (v.dtype.is_floating_point or (v.dim() == 0 and not v.dtype.is_complex)):
                raise LoadError(f"{where}: optimizer state {key!r} has dtype {v.dtype}; accepted: floating point")
            if name in _PER_PARAMETER and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                raise LoadError(
                    f"{where}: optimizer state {key!r} has shape {list(v.shape)} but its parameter has shape "
                    f"{list(p.shape)}"
                )
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": groups}


def _check_scheduler(where: str, meta: dict, scheduler) -> dict | None:
    saved = meta["scheduler"]
    if not hasattr(scheduler, "load_state_dict"):
        return None
    kind, saved_kind = _kind(scheduler), meta.get("scheduler_class")
    if saved is None:
        raise LoadError(f"{where}: the checkpoint has no schedule, but this run has one ({kind}); resume "
                        f"with the schedule it was trained with (scheduler=None)")
    if saved_kind is not None and saved_kind != kind:
        raise LoadError(f"{where}: the checkpoint was trained with schedule {saved_kind}, this run uses {kind}")
    live = scheduler.state_dict()
    if not isinstance(saved, dict) or set(live) - set(saved):
        lacks = sorted(set(live) - set(saved)) if isinstance(saved, dict) else sorted(live)
        raise LoadError(f"{where}: the saved schedule {saved!r:.120} lacks {lacks}; it was saved with another schedule")
    for k, v in live.items():
        if k in ("lr_lambdas",):  # functions: torch saves only the callable objects' state
            continue
        if not _same_kind(v, saved[k]):
            raise LoadError(f"{where}: the saved schedule has {k}={saved[k]!r}; {kind} takes a value like {v!r}")
    return saved


def _check_state(where: str, state, like: dict | None) -> dict:
    if not isinstance(state, dict):
        raise LoadError(f"{where}: the loop state is {state!r:.120}; accepted: a dict like {{'epoch': 1, ...}}")
    keys = ["epoch", "global_step", "history"] + [k for k in (like or {}) if k not in ("epoch", "global_step", "history")]
    absent = [k for k in keys if k not in state]
    if absent:
        raise LoadError(f"{where}: the loop state lacks {absent}; it holds {sorted(state)}")
    for k in ("epoch", "global_step"):
        if not is_int(state[k]) or state[k] < 0:
            raise LoadError(f"{where}: the loop state has {k}={state[k]!r}; accepted: a non-negative int")
    if not isinstance(state["history"], list):
        raise LoadError(f"{where}: the loop state has history={state['history']!r:.120}; accepted: a list")
    for k in keys:
        v = state[k]
        if k == "best_epoch" and not (v is None or (is_int(v) and v >= 0)):
            raise LoadError(f"{where}: the loop state has best_epoch={v!r}; accepted: None or a non-negative int")
        if k.startswith("best_") and k != "best_epoch" and not (v is None or _number(v)):
            raise LoadError(f"{where}: the loop state has {k}={v!r}; accepted: None or a finite number")
    return state
