"""The one training loop that every trainer of the library drives.

:class:`TrainLoop` owns what all training shares: the ``accelerate`` set-up (device placement,
mixed precision, gradient accumulation, data parallel), gradient clipping, the learning-rate
schedule (``transformers``' schedules by name), the ``tqdm`` bar, per-epoch history, epoch
checkpoints and early stopping. What differs between trainers is a *step function* (one
micro-batch in, its loss out) and *callbacks* (:class:`Callback`) called at fixed points:

* the DAS :class:`~pyvene_like.training.Trainer`: temperature annealing, IIA evaluation,
  source caching, best-state restore (:class:`EarlyStopping`);
* :func:`~pyvene_like.sae.train_sae`: decoder-row projection and renormalisation, dead features;
* :func:`~pyvene_like.codebook.train_codebook_model`: dead-code replacement, windowed logs;
* :func:`~pyvene_like.analysis.train_probe`: per-epoch train / test accuracy.

One micro-batch, in order::

    on_step_begin(loop, batch)
    loss, stats = step_fn(batch)                 # forward + loss (stats: numbers to sum per epoch)
    accelerator.backward(loss)
    on_before_optimizer_step(loop)               # gradients are there (scaled under fp16)
    clip (max_grad_norm), optimizer.step(), scheduler.step(), optimizer.zero_grad()
    global_step += 1                             # only when the accumulated gradients synced
    on_step_end(loop, loss, stats)

and per epoch: ``on_epoch_begin`` ... ``on_epoch_end(loop, entry)`` (callbacks fill the
history ``entry``; a non-empty one is appended), then the checkpoint, then ``should_stop``.
Under gradient accumulation the optimizer, schedule and zero_grad only act on the micro-batch
that syncs (``loop.sync_gradients``); ``global_step`` counts optimizer steps.

Multi-process runs (``torchrun``, ``accelerate launch``) need no flag, also on CPU-only machines
(see :mod:`.distributed`). Every count is of this process's optimizer steps, from the prepared,
per-process loader: ``total_steps``, what annealing callbacks see, and the learning-rate
schedule, which the loop steps once per optimizer step (not through ``accelerate``, which
would step it once per process). The epoch's summed stats are summed over the processes
before ``on_epoch_end`` (so every process writes the same history), ``loop.reduce`` does the
same for a callback's own tensors, and only the main process writes checkpoints and shows the
bar. A checkpoint holds no per-process state, so a run resumes under any number of processes.

This module imports nothing of the DAS machinery, so the feature packages (``sae``,
``codebook``, ``analysis``) can build on it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LRScheduler

from ..errors import ConfigError, TrainingError, accepted
from ..validation import is_int
from .checkpoint import read_checkpoint, write_checkpoint
from .distributed import refuse_fsdp, resolve_cpu

PRECISIONS = ("no", "fp16", "bf16", "fp8")


def make_accelerator(mixed_precision: str = "no", *, gradient_accumulation_steps: int = 1,
                     cpu: bool = False) -> Accelerator:
    """An ``accelerate.Accelerator`` with this precision, also when an earlier one in this
    process used another.

    ``accelerate`` keeps one process-wide state and refuses a second ``Accelerator`` with a
    different ``mixed_precision``. A notebook that trains in float32 and then in bf16 is
    ordinary use, so outside a distributed launch the per-accelerator part of that state
    (not the process group) is dropped when the precision changes. Inside a launch
    (``accelerate launch``, ``torchrun``) the state is left alone and a mismatch is an error.

    A multi-process launch on a machine with no GPU gets ``cpu=True`` (gloo) without asking:
    without it ``accelerate`` would run every process on its own over all the data.
    """
    if mixed_precision not in PRECISIONS:
        raise ConfigError(f"mixed_precision: got {mixed_precision!r}; accepted: {accepted(PRECISIONS)}")
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        if PartialState().distributed_type == DistributedType.NO:
            AcceleratorState._reset_state()
    cpu = resolve_cpu(cpu)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps,
                       cpu=cpu)


def make_scheduler(scheduler: str | LRScheduler | None, optimizer: torch.optim.Optimizer, *, total_steps: int,
                   warmup_steps: int | None = None, warmup_ratio: float = 0.0) -> LRScheduler | None:
    """A learning-rate schedule: a ``transformers`` schedule name (``"linear"``, ``"cosine"``,
    ``"constant"``, ``"constant_with_warmup"``, ...) with ``warmup_steps`` (or ``warmup_ratio``
    of ``total_steps``) of linear warm-up from 0; a ready ``LRScheduler`` as it is; ``None``
    for none."""
    if scheduler is None or not isinstance(scheduler, str):
        return scheduler
    from transformers import SchedulerType, get_scheduler

    names = [s.value for s in SchedulerType]
    if scheduler not in names:
        from ..errors import did_you_mean

        raise ConfigError(f"scheduler: {scheduler!r} is not a transformers schedule; accepted: "
                          f"{accepted(names)}.{did_you_mean(scheduler, names)}")
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * total_steps)
    return get_scheduler(scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


class Callback:
    """Hooks of :class:`TrainLoop`; override the ones you need (each gets the loop)."""

    def on_train_begin(self, loop: TrainLoop) -> None:
        """Before the first epoch (after a checkpoint was loaded)."""

    def on_epoch_begin(self, loop: TrainLoop) -> None:
        """Before the epoch's loader is iterated (reseed a sampler here)."""

    def on_step_begin(self, loop: TrainLoop, batch: Any) -> None:
        """Before each micro-batch's step function."""

    def on_before_optimizer_step(self, loop: TrainLoop) -> None:
        """After the backward pass, before clipping and the optimizer step."""

    def on_step_end(self, loop: TrainLoop, loss: torch.Tensor, stats: dict) -> None:
        """After each micro-batch; ``loop.sync_gradients`` says whether the optimizer stepped."""

    def on_epoch_end(self, loop: TrainLoop, entry: dict) -> None:
        """Fill ``entry``, the epoch's history record (``loop.epoch_sums`` holds the summed stats)."""

    def should_stop(self, loop: TrainLoop) -> bool:
        """Asked after each epoch (after its checkpoint); True ends training."""
        return False

    def on_train_end(self, loop: TrainLoop) -> None:
        """Always, also after an error; ``loop.finished`` is False then."""


class EarlyStopping(Callback):
    """Tracks the best value of history key ``metric`` and stops after ``patience`` epochs
    without a gain of more than ``min_delta`` (``patience=None``: never stops, only tracks).

    The best value and its epoch go to ``loop.state["best_<metric>"]`` and
    ``loop.state["best_epoch"]``. With ``restore=`` a module, its whole state is copied at
    each new best and loaded back when training ends normally."""

    def __init__(self, metric: str, *, patience: int | None = None, min_delta: float = 0.0, mode: str = "max",
                 restore: torch.nn.Module | None = None):
        if mode not in ("max", "min"):
            raise ConfigError(f"EarlyStopping: mode={mode!r}; accepted: 'max', 'min'")
        self.metric, self.patience, self.min_delta, self.mode, self.restore = metric, patience, min_delta, mode, restore
        self.key = f"best_{metric}"
        self.bad = 0
        self.best_state = None

    def on_train_begin(self, loop: TrainLoop) -> None:
        self.bad = 0
        self.best_state = None

    def on_epoch_end(self, loop: TrainLoop, entry: dict) -> None:
        value = entry.get(self.metric)
        if value is None:
            return
        best = loop.state.get(self.key)
        better = best is None or (value > best + self.min_delta if self.mode == "max"
                                  else value < best - self.min_delta)
        if better:
            loop.state[self.key], loop.state["best_epoch"] = value, loop.epoch + 1
            if self.restore is not None:
                import copy

                self.best_state = copy.deepcopy(self.restore.state_dict())
            self.bad = 0
        else:
            self.bad += 1

    def should_stop(self, loop: TrainLoop) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def on_train_end(self, loop: TrainLoop) -> None:
        if loop.finished and self.best_state is not None and self.restore is not None:
            self.restore.load_state_dict(self.best_state)


@dataclass
class LoopResult:
    """What :meth:`TrainLoop.run` did."""

    history: list = field(default_factory=list)
    global_step: int = 0
    stopped_early: bool = False
    seconds: float = 0.0


def _positive_or_none(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    low = 0 if allow_zero else 1
    if not is_int(value) or value < low:
        raise ConfigError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} int or None, "
                          f"got {value!r}")


def _all_finite(tensors: list) -> bool:
    """Whether every tensor holds only finite values (one host sync for all of them)."""
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class TrainLoop:
    """One training loop, driven by ``step_fn`` and :class:`Callback` s (see the module docstring).

    Args:
        step_fn(batch) -> loss, or ``(loss, stats)``: forward and loss of one micro-batch.
            ``stats`` (numbers or tensors; tensors avoid a device sync) are summed over the
            epoch into ``loop.epoch_sums`` for the callbacks that write the history.
        model, optimizer, loader: prepared by ``accelerate`` (a model dispatched with
            ``device_map`` is not moved); afterwards ``loop.model``, ``loop.optimizer``,
            ``loop.loader``, ``loop.scheduler`` are the prepared objects.
        epochs / max_steps: passes over the loader, and/or a cap on optimizer steps
            (``epochs=None``: as many passes as ``max_steps`` needs).
        scheduler, warmup_steps, warmup_ratio: see :func:`make_scheduler`; its length is the
            run's optimizer steps (of this process); a ready schedule is stepped once per
            optimizer step.
        gradient_accumulation_steps, max_grad_norm (clipping ``clip_parameters``, default the
            optimizer's), mixed_precision, cpu: handled by ``accelerate``; ``place_model=False``
            leaves the model where it is (default: unless it has an ``hf_device_map``).
        use_accelerate: ``False`` runs plain PyTorch where the objects already are (no
            ``Accelerator``, no process-wide state; one micro-batch per step).
        checkpoint_dir / checkpoint_module: after each epoch, ``checkpoint_dir/epoch-<n>`` gets
            the module's weights, the optimizer and schedule, and ``loop.state``.
        state: the run's state dict (``epoch``, ``global_step``, ``history`` and what callbacks
            add); a resumed run continues from it.
        show_progress, desc, postfix_every: the ``tqdm`` bar (the loss is shown every
            ``postfix_every`` steps; ``None``: never).
    """

    def __init__(self, step_fn: Callable, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loader: Iterable, epochs: int | None = 1, max_steps: int | None = None,
                 scheduler: str | LRScheduler | None = None,
                 warmup_steps: int | None = None, warmup_ratio: float = 0.0,
                 gradient_accumulation_steps: int = 1, max_grad_norm: float | None = None,
                 clip_parameters: Iterable[torch.nn.Parameter] | None = None, mixed_precision: str = "no", cpu: bool = False,
                 use_accelerate: bool = True, place_model: bool | None = None, callbacks: Iterable[Callback] = (),
                 checkpoint_dir: str | Path | None = None, checkpoint_module: torch.nn.Module | None = None,
                 state: dict | None = None, show_progress: bool = True, desc: str = "training",
                 postfix_every: int | None = 20):
        _positive_or_none("epochs", epochs, allow_zero=True)
        _positive_or_none("max_steps", max_steps)
        _positive_or_none("gradient_accumulation_steps", gradient_accumulation_steps)
        if epochs is None and max_steps is None:
            raise ConfigError("TrainLoop: epochs=None needs max_steps")
        if not use_accelerate and gradient_accumulation_steps != 1:
            raise ConfigError("TrainLoop: gradient_accumulation_steps > 1 needs use_accelerate=True")
        if checkpoint_dir is not None and checkpoint_module is None:
            raise ConfigError("TrainLoop: checkpoint_dir needs checkpoint_module (the weights to save)")
        refuse_fsdp(model, desc)
        self.step_fn = step_fn
        self.epochs = epochs
        self.max_steps = max_steps
        self.accumulation = gradient_accumulation_steps
        self.max_grad_norm = max_grad_norm
        self.callbacks = list(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_module = checkpoint_module
        self.show_progress = show_progress
        self.desc = desc
        self.postfix_every = postfix_every
        self.state = state if state is not None else {}
        self.state.setdefault("epoch", 0)
        self.state.setdefault("global_step", 0)
        self.state.setdefault("history", [])

        if use_accelerate:
            self.accelerator = make_accelerator(mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps,
                                                cpu=cpu)
            # A model dispatched with device_map already sits where it should: accelerate must not
            # move it to one device (its own hooks move activations between the parts).
            place = not getattr(model, "hf_device_map", None) if place_model is None else place_model
            # The schedule is not prepared: accelerate would step it once per process, sized on
            # the unsplit loader; the loop steps it once per optimizer step of this process.
            # DistributedDataParallel syncs the gradients of the parameters that require grad
            # when it is built, and expects them every step: it must see only those the
            # optimizer trains (a trainer freezes the rest later, in on_train_begin).
            trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
            others = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
            for p in others:
                p.requires_grad_(False)
            try:
                self.model, self.optimizer, self.loader = self.accelerator.prepare(
                    model, optimizer, loader, device_placement=[place, True, True])
            finally:
                for p in others:
                    p.requires_grad_(True)
            self.device = self.accelerator.device
        else:
            if mixed_precision != "no":
                raise ConfigError("TrainLoop: mixed_precision needs use_accelerate=True")
            self.accelerator = None
            self.model, self.optimizer, self.loader = model, optimizer, loader
            param = next(model.parameters(), None)
            self.device = param.device if param is not None else torch.device("cpu")
        #: the model without accelerate's wrappers (DDP ...), for step functions that call its methods;
        #: computed once (unwrapping looks up installed packages on every call)
        self.unwrapped_model = self.model if self.accelerator is None else self.accelerator.unwrap_model(self.model)
        self.clip_parameters = clip_parameters
        #: optimizer steps of this process's run (what schedules and annealing callbacks count towards)
        self.total_steps = self._run_steps(len(self.loader))
        self.scheduler = make_scheduler(scheduler, optimizer, total_steps=self.total_steps,
                                        warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)
        self.epoch = self.state["epoch"]
        self.epoch_sums: dict = {}
        self.sync_gradients = True
        self.finished = False
        self.bar = None
        self._epoch_start = time.perf_counter()

    # -- small helpers for step functions and callbacks -----------------------------------------
    def _run_steps(self, n_batches: int) -> int:
        per_epoch = math.ceil(n_batches / self.accumulation)
        if self.epochs is None:
            return self.max_steps
        total = per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps is not None else total

    @property
    def global_step(self) -> int:
        return self.state["global_step"]

    @property
    def history(self) -> list:
        return self.state["history"]

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    def reduce(self, value: Any, op: str = "sum") -> Any:
        """``value`` (a tensor or a number) reduced over the processes with ``op`` (``"sum"``,
        ``"mean"``, ``"max"``, ``"min"``); as it is in a one-process run. Every process must call it."""
        if self.num_processes == 1:
            return value
        from accelerate.utils import reduce

        t = torch.as_tensor(value, dtype=torch.float64 if isinstance(value, float) else None, device=self.device)
        dtype = t.dtype
        work = t.double() if op == "mean" or not dtype.is_floating_point else t
        if op in ("max", "min"):
            # accelerate.utils.reduce sums or averages; max / min go through torch.distributed
            work = work.clone()
            torch.distributed.all_reduce(work, torch.distributed.ReduceOp.MAX if op == "max"
                                         else torch.distributed.ReduceOp.MIN)
        else:
            work = reduce(work, reduction=op)
        out = work.to(dtype) if op != "mean" else work.float()
        if isinstance(value, torch.Tensor):
            return out.to(value.device)
        return out.item()

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` overwritten in place with the main process's values (every process must
        call it); for state a callback changes from per-process data, which must stay equal."""
        if self.num_processes > 1:
            from accelerate.utils import broadcast

            out = broadcast(tensor, from_process=0)
            if out is not tensor:
                tensor.copy_(out)
        return tensor

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context for a step function's forward (a no-op without accelerate)."""
        return contextlib.nullcontext() if self.accelerator is None else self.accelerator.autocast()

    def epoch_seconds(self) -> float:
        """Seconds since the epoch began (of the slowest process: every process must call it)."""
        return round(self.reduce(time.perf_counter() - self._epoch_start, "max"), 3)

    def log(self, entry: dict) -> None:
        """Append a record to the history (callbacks logging every n steps use this)."""
        self.state["history"].append(entry)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        return write_checkpoint(path, self.checkpoint_module, self.optimizer, self.scheduler, self.state)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        module = self.checkpoint_module
        self.state = read_checkpoint(path, module, self.optimizer, self.scheduler, self.device, self.state)
        self.epoch = self.state["epoch"]

    # -- the loop ---------------------------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        acc = self.accelerator
        if acc is None:
            loss.backward()
        else:
            acc.backward(loss)
        self._call("on_before_optimizer_step")
        # fp16 is left to its loss scaler, which skips steps with inf gradients by design.
        check_finite = self.sync_gradients and getattr(acc, "mixed_precision", "no") != "fp16"
        if check_finite:
            self._check_finite_gradients(loss)
        if self.max_grad_norm is not None and self.sync_gradients:
            params = self.clip_parameters
            if params is None:
                params = self._optimized_parameters()
            if acc is None:
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            else:
                acc.clip_grad_norm_(params, self.max_grad_norm)
        # A prepared optimizer only acts on the micro-batch whose gradients sync; the schedule
        # follows the steps it took (fp16's scaler skips a step with inf gradients).
        self.optimizer.step()
        if check_finite:
            self._check_finite_parameters(loss)
        if self.scheduler is not None and self.sync_gradients and not getattr(self.optimizer, "step_was_skipped",
                                                                              False):
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _optimized_parameters(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _check_finite_gradients(self, loss: torch.Tensor) -> None:
        """Refuse a step whose (synced, so same on every process) gradients hold inf or NaN: it
        would turn the parameters into NaN for the rest of the run with no error."""
        if _all_finite([p.grad for p in self._optimized_parameters() if p.grad is not None]):
            return
        self.optimizer.zero_grad(set_to_none=True)
        raise TrainingError(
            f"training: the gradients became inf or NaN {self._where(loss)}; the step was not "
            f"taken, so the parameters are those of the step before. Check the data for inf/NaN, "
            f"lower the learning rate or clip gradients (max_grad_norm)"
        )

    def _check_finite_parameters(self, loss: torch.Tensor) -> None:
        """Finite gradients times a large learning rate can still overflow the parameters."""
        if _all_finite(self._optimized_parameters()):
            return
        raise TrainingError(
            f"training: the optimizer step {self._where(loss)} made parameters inf or NaN (the "
            f"gradients were finite, the update overflowed); they are not usable. Lower the "
            f"learning rate or clip gradients (max_grad_norm)"
        )

    def _where(self, loss: torch.Tensor) -> str:
        lrs = sorted({g["lr"] for g in self.optimizer.param_groups if "lr" in g})
        return (f"at epoch {self.state['epoch'] + 1}, step {self.state['global_step'] + 1} "
                f"(loss {float(loss.detach().float())}, learning rate {lrs})")

    def _add_stats(self, stats: dict) -> None:
        sums = self.epoch_sums
        for k, v in stats.items():
            sums[k] = v if k not in sums else sums[k] + v

    def _reduce_sums(self) -> None:
        """The epoch's stats summed over the processes (one collective for the scalars)."""
        sums = self.epoch_sums
        keys = sorted(sums)
        scalars = [k for k in keys if not isinstance(sums[k], torch.Tensor) or sums[k].dim() == 0]
        if scalars:
            total = self.reduce(torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).cpu()
                                             for k in scalars]).to(self.device))
            for k, v in zip(scalars, total.cpu()):
                old = sums[k]
                if isinstance(old, torch.Tensor):
                    sums[k] = v.to(old.dtype).to(old.device)
                else:
                    sums[k] = int(v) if isinstance(old, int) else float(v)
        for k in keys:
            if k not in scalars:
                sums[k] = self.reduce(sums[k])

    def _out_of_steps(self) -> bool:
        return self.max_steps is not None and self.state["global_step"] >= self.max_steps

    def run(self) -> LoopResult:
        """Train from ``loop.state`` (epoch and step 0, or where a loaded checkpoint left off)."""
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        acc = self.accelerator
        result = LoopResult()
        self.finished = False
        self.bar = tqdm(total=self.total_steps, initial=self.state["global_step"], desc=self.desc,
                        disable=not self.show_progress or not self.is_main_process, dynamic_ncols=True)
        # Gradients left by whoever used the parameters before must not enter the first step.
        getattr(self.optimizer, "optimizer", self.optimizer).zero_grad(set_to_none=True)
        try:
            self._call("on_train_begin")
            epoch = self.state["epoch"]
            while (self.epochs is None or epoch < self.epochs) and not self._out_of_steps():
                self.epoch = epoch
                self.epoch_sums = {}
                self._epoch_start = time.perf_counter()
                self._call("on_epoch_begin")
                empty = True
                for batch in self.loader:
                    empty = False
                    self._call("on_step_begin", batch)
                    ctx = acc.accumulate(self.model) if acc is not None else contextlib.nullcontext()
                    with ctx:
                        self.sync_gradients = acc.sync_gradients if acc is not None else True
                        out = self.step_fn(batch)
                        loss, stats = out if isinstance(out, tuple) else (out, {})
                        self._backward_and_step(loss)
                    self._add_stats(stats)
                    if self.sync_gradients:
                        self.state["global_step"] += 1
                        self.bar.update(1)
                        if (self.postfix_every and not self.bar.disable
                                and self.state["global_step"] % self.postfix_every == 0):
                            self.bar.set_postfix(loss=f"{loss.item():.4f}")
                    self._call("on_step_end", loss, stats)
                    if self.sync_gradients and self._out_of_steps():
                        break
                if empty and self.epochs is None:
                    raise ConfigError("TrainLoop: the loader gave no batch; max_steps can never be reached")
                if self.num_processes > 1:
                    self._reduce_sums()
                entry: dict = {}
                self._call("on_epoch_end", entry)
                if entry:
                    self.log(entry)
                self.state["epoch"] = epoch + 1
                if self.checkpoint_dir is not None:
                    if self.is_main_process:
                        self.save_checkpoint(self.checkpoint_dir / f"epoch-{epoch + 1}")
                    if acc is not None:
                        acc.wait_for_everyone()
                if any(cb.should_stop(self) for cb in self.callbacks):
                    result.stopped_early = True
                    break
                epoch += 1
            self.finished = True
        finally:
            self.bar.close()
            self._call("on_train_end")
        result.history = list(self.state["history"])
        result.global_step = self.state["global_step"]
        result.seconds = time.perf_counter() - t0
        return result


