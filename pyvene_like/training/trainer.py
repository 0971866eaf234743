"""Training trainable interventions (DAS and friends) on counterfactual data.

Runs on the library's one training loop (:class:`~pyvene_like.training.loop.TrainLoop`:
``accelerate`` device placement, mixed precision, gradient accumulation, data parallel;
transformers schedules; ``tqdm``), with this file's step function and callbacks: temperature
annealing, IIA evaluation, early stopping with the best interventions restored. Sources are
fixed inputs: when the wrapped model is frozen, their activations at the intervention sites
are computed once before the first step and every step after that runs only the base pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..errors import ConfigError, ShapeError, accepted
from ..modes import evaluating, restore_flags, training_flags
from ..validation import (
    check_bool,
    check_int,
    check_number,
    check_optional_positive_int,
    check_path,
    is_int,
)
from .data import CounterfactualCollator, check_columns, check_location_columns
from .distributed import gather_rows, process_state, shard_rows, shard_size
from .evaluate import (
    EvalResult,
    _columns,
    _move,
    _take,
    check_column_tensors,
    check_masks_used,
    default_logits,
    default_loss,
    default_metric,
    evaluate,
)
from .loop import Callback, EarlyStopping, TrainLoop
from .source_cache import STORAGES, DiskSourceCache, MemorySourceCache, build_source_cache

if TYPE_CHECKING:
    from datasets import Dataset

    from ..model import IntervenableModel


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did: one history entry per epoch."""

    history: list = field(default_factory=list)
    global_step: int = 0
    best_eval_iia: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    sources_cached: bool = False
    source_cache: str | None = None
    seconds: float = 0.0


class _Rows(torch.utils.data.Dataset):
    """Row indices; the DataLoader hands out index tensors and columns are sliced with them."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def __getitems__(self, idx):
        return torch.as_tensor(idx, dtype=torch.long)


def _identity(x):
    return x


class Trainer:
    """Optimises the trainable interventions of an :class:`~pyvene_like.IntervenableModel`.

    Args:
        intervenable: the wrapped model. Unless ``train_model=True`` the base model's
            gradients are disabled and only intervention parameters train.
        train_dataset / eval_dataset: counterfactual datasets (``input_ids``,
            ``source_input_ids``, ``labels``, ``intervention_id``, optional ``base_labels`` and
            locations; see :mod:`pyvene_like.training.data`), or dicts of such columns.
        subspaces: ``{intervention id: subspaces}``, e.g. ``{0: [0], 1: [1], 2: [0, 1]}``.
        input_key, unit_locations: how rows become model calls (see ``CounterfactualCollator``).
        epochs, batch_size, lr, weight_decay: the usual; ``optimizer`` may be a
            ``torch.optim.Optimizer`` class or a ready instance (default ``AdamW``).
        scheduler: a transformers schedule name (``"linear"``, ``"cosine"``, ``"constant"``...)
            with ``warmup_ratio``, or a ready ``LRScheduler``.
        gradient_accumulation_steps, max_grad_norm, mixed_precision (``"no"``, ``"bf16"``,
        ``"fp16"``): handled by ``accelerate``.
        loss_fn(logits, labels) -> scalar; metric_fn(logits, labels) -> per-example scores;
        logits_fn(outputs) -> logits (default: ``.logits``, last position of sequences).
        cache_sources: ``"auto"`` caches source activations when the model is frozen and the
            config runs in parallel mode; ``True`` insists (error otherwise); ``False`` never.
        source_cache: where that cache lives: ``"memory"`` (on the training device, the whole
            cache on every process), ``"disk"`` (Arrow files, memory-mapped: each step reads
            its batch's rows, so memory does not grow with the dataset; see
            :mod:`pyvene_like.training.source_cache`) or ``"auto"``: disk when the whole cache
            on every process of the machine would take more than half the free memory.
            Training reads the same values either way. ``source_cache_dir``: the folder for
            the disk cache (default: a temporary folder, removed with the Trainer); it must
            be shared by every process of a launch.
        temperature_schedule: ``(start, end)``: interventions with a temperature (boundless,
            sigmoid masks) are annealed linearly over the training steps.
        early_stopping_patience: stop after this many evaluations without an IIA gain of
            ``early_stopping_min_delta`` (needs ``eval_dataset``); the best interventions are
            restored at the end when ``load_best_at_end`` (their whole state, temperatures
            included, as it was when that IIA was measured).
        checkpoint_dir: each epoch's intervention weights (safetensors), optimizer state and
            trainer state; ``resume_from_checkpoint`` continues from one.

    The run is a :class:`~pyvene_like.training.loop.TrainLoop` (``trainer.loop``) driven by
    this class's step function and callbacks; ``model``, ``optimizer``, ``loader``,
    ``scheduler``, ``accelerator`` and ``state`` are the loop's.
    """

    def __init__(
        self,
        intervenable: IntervenableModel,
        train_dataset: Dataset | Mapping[str, Any],
        eval_dataset: Dataset | Mapping[str, Any] | None = None,
        *,
        subspaces: Mapping[int, Any] | None = None,
        input_key: str | None = None,
        unit_locations: Any = 0,
        epochs: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: str | LRScheduler | None = "linear",
        warmup_ratio: float = 0.0,
        gradient_accumulation_steps: int = 1,
        max_grad_norm: float | None = None,
        mixed_precision: str = "no",
        loss_fn: Callable | None = None,
        metric_fn: Callable | None = None,
        logits_fn: Callable | None = None,
        cache_sources: bool | str = "auto",
        source_cache: str = "auto",
        source_cache_dir: str | Path | None = None,
        temperature_schedule: tuple[float, float] | None = None,
        early_stopping_patience: int | None = None,
        early_stopping_min_delta: float = 0.0,
        load_best_at_end: bool = True,
        checkpoint_dir: str | Path | None = None,
        train_model: bool = False,
        id_names: Mapping | None = None,
        seed: int = 0,
        show_progress: bool = True,
        cpu: bool = False,
    ):
        self.intervenable = intervenable
        self.n_interventions = len(intervenable.interventions)
        self.collator = CounterfactualCollator(
            subspaces, input_key=input_key, unit_locations=unit_locations, n_interventions=self.n_interventions
        )
        need_ids = self.collator.subspace_tables is not None
        check_columns(train_dataset, "train_dataset", need_ids)
        check_masks_used(train_dataset, "train_dataset", self.collator)
        if eval_dataset is not None:
            check_columns(eval_dataset, "eval_dataset", need_ids)
            check_masks_used(eval_dataset, "eval_dataset", self.collator)
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name}: expected a positive int, got {value!r}")
        if early_stopping_patience is not None and eval_dataset is None:
            raise ConfigError("early_stopping_patience: needs an eval_dataset to measure IIA on")
        if cache_sources not in ("auto", True, False):
            raise ConfigError(f"cache_sources: expected 'auto', True or False, got {cache_sources!r}")
        if source_cache not in STORAGES:
            raise ConfigError(f"source_cache: expected one of {accepted(STORAGES)}, got {source_cache!r}")
        if cache_sources is False and (source_cache != "auto" or source_cache_dir is not None):
            raise ConfigError("source_cache / source_cache_dir: say where cached sources go, but "
                              "cache_sources=False caches none")
        check_number(lr, "lr", non_negative=True)
        check_number(weight_decay, "weight_decay", non_negative=True)
        if check_number(warmup_ratio, "warmup_ratio", non_negative=True) > 1:
            raise ConfigError(f"warmup_ratio must be a fraction of the steps in 0..1, got {warmup_ratio!r}")
        if max_grad_norm is not None:
            check_number(max_grad_norm, "max_grad_norm", positive=True)
        if not (optimizer is None or isinstance(optimizer, torch.optim.Optimizer)
                or (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer))):
            raise ConfigError(
                f"optimizer: expected None (AdamW), a torch.optim.Optimizer class or an optimizer built on "
                f"the interventions' parameters, got {optimizer!r}"
            )
        for name, value in (("train_model", train_model), ("load_best_at_end", load_best_at_end),
                            ("show_progress", show_progress), ("cpu", cpu)):
            check_bool(value, name)
        # the shuffle seed of epoch e is seed * 100_003 + e, which torch must hold
        check_int(seed, "seed", minimum=0, maximum=2**63 // 100_003 - 10**6)
        check_optional_positive_int(early_stopping_patience, "early_stopping_patience")
        check_number(early_stopping_min_delta, "early_stopping_min_delta", non_negative=True)
        for name, value in (("checkpoint_dir", checkpoint_dir), ("source_cache_dir", source_cache_dir)):
            if value is not None:
                check_path(value, name)
        self.cols = _columns(train_dataset)
        check_column_tensors(self.cols, "train_dataset", default_labels=loss_fn is None)
        self.eval_dataset = eval_dataset
        labels = self.cols["labels"]
        if loss_fn is None and int(labels.min()) < 0:
            raise ShapeError(
                f"train_dataset: column 'labels' holds {int(labels.min())}; the default loss takes class ids "
                f">= 0 (it ignores no label: -100 would leave a batch with no loss); pass loss_fn= to mask labels"
            )
        self._labels_checked = loss_fn is not None  # their range is checked against the first logits
        check_location_columns(self.cols, "train_dataset", self.n_interventions)
        if "intervention_id" in self.cols and need_ids:
            self.collator.subspaces_for(self.cols["intervention_id"])  # unknown ids fail here
        self._check_subspaces()

        # The model is frozen for the run only (on_train_begin) and given back as found after it,
        # so a Trainer that fails here, or is never run, leaves requires_grad untouched.
        params = intervenable.get_trainable_parameters()
        if train_model:
            params = params + [p for p in intervenable.model.parameters() if p.requires_grad]
        if not params:
            kinds = ", ".join(f"{type(iv).__name__}" for iv in intervenable.interventions)
            raise ConfigError(
                f"Trainer: nothing to train: the interventions ({kinds}) have no trainable parameters; "
                f"use a trainable type (rotated_space, low_rank_rotated_space, boundless_rotated_space, "
                f"sigmoid_mask, ...) or train_model=True"
            )
        model_frozen = not train_model or not any(p.requires_grad for p in intervenable.model.parameters())
        can_cache = model_frozen and intervenable.mode == "parallel"
        if cache_sources is True and not can_cache:
            raise ConfigError(
                "cache_sources=True: source activations can only be cached when the model is frozen "
                "(train_model=False) and the config runs in mode='parallel'"
            )
        self.cache_sources = can_cache if cache_sources == "auto" else bool(cache_sources)
        self.source_cache = source_cache
        self.source_cache_dir = Path(source_cache_dir) if source_cache_dir is not None else None

        self.epochs = epochs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn or default_loss
        self.metric_fn = metric_fn
        self.logits_fn = logits_fn or default_logits
        self.temperature_schedule = temperature_schedule
        self.patience = early_stopping_patience
        self.min_delta = early_stopping_min_delta
        self.load_best_at_end = load_best_at_end
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.train_model = train_model
        self.id_names = id_names
        self.seed = seed
        self.show_progress = show_progress

        n = len(labels)
        g = self._shuffle_gen = torch.Generator()
        g.manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            _Rows(n), batch_size=batch_size, shuffle=True, generator=g, collate_fn=_identity
        )
        if optimizer is None or isinstance(optimizer, type):
            cls = optimizer or torch.optim.AdamW
            optimizer = cls(params, lr=lr, weight_decay=weight_decay)
        self._source_cache = None
        callbacks = [_DASCallbacks(self), EarlyStopping("eval_iia", patience=early_stopping_patience,
                                                          min_delta=early_stopping_min_delta,
                                                          restore=intervenable.interventions if load_best_at_end else None)]
        self.loop = TrainLoop(
            self._step, model=intervenable, optimizer=optimizer, loader=loader, epochs=epochs, scheduler=scheduler,
            warmup_ratio=warmup_ratio, gradient_accumulation_steps=gradient_accumulation_steps,
            max_grad_norm=max_grad_norm, mixed_precision=mixed_precision, cpu=cpu,
            place_model=not getattr(intervenable.model, "hf_device_map", None), callbacks=callbacks,
            checkpoint_dir=checkpoint_dir, checkpoint_module=intervenable.interventions,
            state={"epoch": 0, "global_step": 0, "history": [], "best_eval_iia": None, "best_epoch": None},
            show_progress=show_progress, desc="training interventions",
        )
        self.accelerator = self.loop.accelerator
        self.model, self.optimizer, self.loader, self.scheduler = (
            self.loop.model, self.loop.optimizer, self.loop.loader, self.loop.scheduler)
        self.device = self.loop.device
        self.total_steps = self.loop.total_steps

    @property
    def state(self) -> dict:
        """The run's state: ``epoch``, ``global_step``, ``history``, ``best_eval_iia``, ``best_epoch``."""
        return self.loop.state

    @state.setter
    def state(self, value: dict) -> None:
        self.loop.state = value

    # -- checks -------------------------------------------------------------------------------
    @torch.no_grad()
    def _check_subspaces(self) -> None:
        """Fail before training, with the intervention's own error, on subspaces it would refuse:
        each id's subspaces go once through the intervention on a dummy batch."""
        tables = self.collator.subspace_tables
        if tables is None:
            return
        for slot, t in zip(self.intervenable.plan.slots, tables):
            if t is None:
                continue
            iv = slot.intervention
            if not iv.supports_subspaces:
                raise ConfigError(
                    f"subspaces: {slot.label} does not take subspaces (it learns its own mask); "
                    f"give None for it"
                )
            width = (slot.site.head_dim if slot.heads else slot.site.width) or iv.embed_dim
            if width is None:
                continue  # sized on first use: the first step checks instead
            ids = t[1]  # [n ids, k]
            param = next(iv.parameters(), None)
            x = torch.zeros(len(ids), 1, width, device=param.device if param is not None else None,
                            dtype=param.dtype if param is not None else None)
            with torch.random.fork_rng(devices=[]):  # a noise draw here must not shift training's
                iv.forward(x, x if iv.source_from == "source" else None, ids.to(x.device))

    # -- source caching -------------------------------------------------------------------------
    @torch.no_grad()
    def _build_source_cache(self) -> MemorySourceCache | DiskSourceCache:
        """Every training example's source activations at every site, computed once: each
        process computes its share of the rows; in memory the shares are all-gathered (data
        parallel hands each process different rows every epoch), on disk each process writes
        its share to the shared folder and reads any row back from there."""
        n = len(self.cols["labels"])
        state = process_state() if self.loop.num_processes > 1 else None
        rows = shard_rows(n, state)
        own_rows = shard_size(n, state)
        im = self.intervenable

        def batches():
            with evaluating(im):
                for start in range(0, len(rows), self.eval_batch_size):
                    idx = rows[start:start + self.eval_batch_size]
                    b = _move(self.collator(_take(self.cols, idx)), self.device)
                    yield im.collect_source_representations(b["sources"], b["unit_locations"])

        from accelerate.utils import get_int_from_env

        cache = build_source_cache(
            batches(), n, own_rows, len(rows), self.source_cache, device=self.device, state=state,
            folder=self.source_cache_dir, gather=lambda t: gather_rows(t, n, state),
            agree=lambda flag: int(self.loop.reduce(flag, "max")),
            local_processes=get_int_from_env(["LOCAL_WORLD_SIZE"], 1))
        if cache.storage == "disk" and cache.temporary and (state is None or state.is_main_process):
            cache.remove_when_collected(self)
        return cache

    # -- the step and the run ---------------------------------------------------------------------
    def _step_batch(self, idx: torch.Tensor):
        b = _move(self.collator(_take(self.cols, idx)), self.device)
        if self._source_cache is not None:
            reps = _move(self._source_cache.take(idx), self.device)
            _, out = self.model(b["base"], None, b["unit_locations"], source_representations=reps,
                                subspaces=b["subspaces"])
        else:
            _, out = self.model(b["base"], b["sources"], b["unit_locations"], subspaces=b["subspaces"])
        logits = self.logits_fn(out)
        if not self._labels_checked:
            self._check_label_range(logits)
        return self.loss_fn(logits, b["labels"]), logits, b["labels"]

    def _check_label_range(self, logits: torch.Tensor) -> None:
        """Once, on the first step: every class id of the training set indexes the logits."""
        n_classes = logits.shape[-1]
        top = int(self.cols["labels"].max())
        if top >= n_classes:
            raise ShapeError(
                f"train_dataset: column 'labels' holds class {top}, but the model gives {n_classes} "
                f"logits (accepted class ids: 0..{n_classes - 1}); pass logits_fn= / loss_fn= if the "
                f"labels index something else"
            )
        self._labels_checked = True

    def _step(self, idx: torch.Tensor):
        """The loop's step function: one micro-batch of row indices -> loss and summed stats."""
        idx = idx.cpu()
        loss, logits, labels = self._step_batch(idx)
        with torch.no_grad():
            # float32 sums, as a float32 running total would keep them under mixed precision
            stats = {"loss": (loss.detach() * len(idx)).float(), "seen": len(idx)}
            if self.metric_fn is None and logits.dim() == 2 and labels.dim() == 1:
                stats["correct"] = (logits.argmax(-1) == labels).sum()
        return loss, stats

    def train(self, resume_from_checkpoint: str | Path | None = None) -> TrainResult:
        t0 = time.perf_counter()
        if resume_from_checkpoint is not None:
            self.load_checkpoint(resume_from_checkpoint)
        if self.cache_sources and self._source_cache is None:
            self._source_cache = self._build_source_cache()
        cache = self._source_cache
        result = TrainResult(sources_cached=cache is not None, source_cache=getattr(cache, "storage", None))
        run = self.loop.run()
        result.history = run.history
        result.stopped_early = run.stopped_early
        result.global_step = self.state["global_step"]
        result.best_eval_iia = self.state["best_eval_iia"]
        result.best_epoch = self.state["best_epoch"]
        result.seconds = time.perf_counter() - t0
        return result

    def evaluate(self, dataset: Dataset | Mapping[str, Any] | None = None, factual: bool = True) -> EvalResult:
        """IIA (overall and per id) on ``dataset`` (default: the eval dataset)."""
        dataset = self.eval_dataset if dataset is None else dataset
        if dataset is None:
            raise ConfigError("evaluate: no dataset given and the Trainer has no eval_dataset")
        return evaluate(
            self.intervenable, dataset, batch_size=self.eval_batch_size, logits_fn=self.logits_fn,
            metric_fn=self.metric_fn or default_metric, id_names=self.id_names, factual=factual,
            collator=self.collator,
        )

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Intervention weights and optimizer tensors as safetensors, the rest as JSON."""
        return self.loop.save_checkpoint(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        self.loop.load_checkpoint(path)


class _DASCallbacks(Callback):
    """The Trainer's part of the loop: train/eval modes, the per-epoch shuffle, temperature
    annealing, and the epoch's history entry (train loss and IIA, eval IIA)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_train_begin(self, loop):
        tr = self.trainer
        # modes and requires_grad are given back as found when training ends
        self.flags = training_flags(tr.intervenable)
        self.grad_flags = [(p, p.requires_grad) for p in tr.intervenable.model.parameters()]
        if not tr.train_model:
            tr.intervenable.disable_model_gradients()
        tr.intervenable.train()
        if not tr.train_model:
            tr.intervenable.model.eval()  # a frozen model runs as in inference (no dropout)

    def on_epoch_begin(self, loop):
        # Each epoch's order depends only on (seed, epoch), so a resumed run repeats it.
        self.trainer._shuffle_gen.manual_seed(self.trainer.seed * 100_003 + loop.epoch)

    def on_step_begin(self, loop, batch):
        tr = self.trainer
        if tr.temperature_schedule is None:
            return
        start, end = tr.temperature_schedule
        frac = loop.global_step / max(1, loop.total_steps - 1)
        value = start + (end - start) * min(1.0, frac)
        for iv in tr.intervenable.interventions:
            if hasattr(iv, "set_temperature"):
                iv.set_temperature(value)

    def on_epoch_end(self, loop, entry):
        tr = self.trainer
        sums = loop.epoch_sums
        seen = max(sums.get("seen", 0), 1)
        entry.update({
            "epoch": loop.epoch + 1,
            "step": loop.global_step,
            "train_loss": (sums.get("loss", torch.zeros(())) / seen).item(),
            "seconds": loop.epoch_seconds(),
        })
        if tr.metric_fn is None:
            entry["train_iia"] = (torch.as_tensor(sums.get("correct", 0)).float() / seen).item()
        if tr.eval_dataset is not None:
            ev = tr.evaluate(factual=False)
            entry["eval_iia"] = ev.iia
            entry["eval_iia_per_id"] = ev.iia_per_id
            loop.bar.set_postfix(loss=f"{entry['train_loss']:.4f}", iia=f"{ev.iia:.3f}")

    def on_train_end(self, loop):
        restore_flags(self.flags)
        for p, flag in self.grad_flags:
            p.requires_grad_(flag)


def train_interventions(intervenable: IntervenableModel, train_dataset: Dataset | Mapping[str, Any],
                        eval_dataset: Dataset | Mapping[str, Any] | None = None, **kwargs: Any) -> TrainResult:
    """``Trainer(intervenable, train_dataset, eval_dataset, **kwargs).train()``."""
    return Trainer(intervenable, train_dataset, eval_dataset, **kwargs).train()
