"""Training a model with codebooks: language-modelling loss plus a reconstruction term.

:func:`train_codebook_model` trains a model wrapped with :func:`~pyvene_like.codebook.wrap_codebook`
(the codebooks, and the model itself unless ``train_model=False``) on token sequences:

* loss = next-token cross-entropy + ``reconstruction_weight`` x the mean, over codebooks, of the
  mean squared error between each codebook's output and its (layer-normed) input. With the
  straight-through estimator the input's gradient from this term cancels, so it only moves
  the selected codes towards the inputs they stand for (the k-means step of vector
  quantisation); the language-modelling loss trains everything;
* dead codes: a code that no position of any batch selected during the last
  ``dead_code_steps`` steps is replaced by a (layer-normed) input of the latest batch of its
  codebook, chosen at random, and its optimiser moments are cleared;
* the library's training loop (:class:`~pyvene_like.training.loop.TrainLoop`) runs it:
  ``accelerate`` places model and batches (``cpu=``, ``mixed_precision=``), transformers'
  cosine schedule with linear warm-up sets the learning rate, ``tqdm`` shows progress;
* under ``torchrun`` / ``accelerate launch`` it trains data parallel: code use is combined over
  the processes (a code is used if any process used it), replaced codes are the main
  process's, and the logged means are over every process's steps, so all processes keep the
  same model and history.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError
from ..training.loop import Callback, TrainLoop
from ..validation import check_number, check_optional_positive_int, check_positive_int
from .layer import CodebookLayer
from .wrap import get_codebooks

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass
class CodebookTrainResult:
    """What :func:`train_codebook_model` did.

    ``history``: one entry per ``log_every`` steps (means over those steps): ``step``,
    ``loss``, ``lm_loss``, ``reconstruction_loss``, ``codes_used`` (fraction of codes selected
    at least once in those steps, over all codebooks and heads), ``dead_codes_replaced``;
    ``replaced``: codes replaced, per codebook name."""

    history: list = field(default_factory=list)
    global_step: int = 0
    replaced: dict = field(default_factory=dict)
    seconds: float = 0.0


def _token_tensor(data) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ``[N, T]`` LongTensor, a dict / ``datasets.Dataset`` with ``input_ids`` (and optional
    ``attention_mask``), or a list of equal-length id lists -> (ids, mask or None)."""
    mask = None
    if isinstance(data, torch.Tensor):
        ids = data
    else:
        try:
            ids = data["input_ids"]
        except (TypeError, KeyError, IndexError):
            if isinstance(data, (list, tuple)):
                ids = data
            else:
                raise ConfigError(
                    f"train_codebook_model: data must be a [N, T] tensor of token ids, a list of "
                    f"equal-length id lists, or a dict / datasets.Dataset with an 'input_ids' column; "
                    f"got {type(data).__name__}"
                ) from None
        else:
            try:
                mask = data["attention_mask"]
            except (KeyError, TypeError, IndexError):
                mask = None
    try:
        ids = torch.as_tensor(ids)
        mask = None if mask is None else torch.as_tensor(mask)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ShapeError(
            f"train_codebook_model: input_ids must be sequences of one length (pad them and give "
            f"attention_mask): {e}"
        ) from None
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ShapeError(
            f"train_codebook_model: input_ids must be an integer [N, T] tensor, got shape "
            f"{tuple(ids.shape)} and dtype {ids.dtype}"
        )
    if ids.shape[1] < 2:
        raise ShapeError(f"train_codebook_model: sequences need at least 2 tokens, got length {ids.shape[1]}")
    if mask is not None and mask.shape != ids.shape:
        raise ShapeError(
            f"train_codebook_model: attention_mask has shape {tuple(mask.shape)}, input_ids "
            f"{tuple(ids.shape)}"
        )
    return ids.long(), None if mask is None else mask.long()


def _lm_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    target = ids[:, 1:]
    if mask is not None:
        target = target.masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           ignore_index=-100)


class _Watch:
    """Forward hooks on the codebooks: the reconstruction error of each call, and per code
    whether it was selected (and the latest normed inputs, for replacing dead codes)."""

    def __init__(self, layers: dict[str, CodebookLayer]):
        self.layers = layers
        self.errors: list[torch.Tensor] = []
        self.used = {n: torch.zeros(cb.num_groups, cb.num_codes, dtype=torch.bool, device=cb.codes.device)
                     for n, cb in layers.items()}
        self.inputs: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None
        self.handles = []

    def __enter__(self):
        for name, cb in self.layers.items():
            self.handles.append(cb.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, name):
        def hook(cb: CodebookLayer, args, out):
            x = args[0]
            xg = cb.normalize(x)  # [..., G, d]
            flat_out = out.reshape(-1, cb.num_groups, cb.group_dim)
            flat_in = xg.reshape(-1, cb.num_groups, cb.group_dim)
            keep = None
            if self.mask is not None and self.mask.numel() == flat_in.shape[0]:
                keep = self.mask.reshape(-1).bool()
                flat_out, flat_in = flat_out[keep], flat_in[keep]
            # out = codes' mean + (xg - xg.detach()): out - xg has the codes' gradient only.
            self.errors.append(F.mse_loss(flat_out.float(), flat_in.float()))
            with torch.no_grad():
                ids = cb.select(x)[1].reshape(-1, cb.num_groups, cb.k)
                if keep is not None:
                    ids = ids[keep]
                used = self.used[name]
                g = torch.arange(cb.num_groups, device=ids.device).view(1, -1, 1).expand_as(ids)
                used[g.reshape(-1), ids.reshape(-1)] = True
                self.inputs[name] = flat_in.detach()

        return hook


def _replace_dead(cb: CodebookLayer, dead: torch.Tensor, inputs: torch.Tensor, optimizer,
                  gen: torch.Generator) -> int:
    """Put random recent inputs in place of the ``dead`` ``[G, N]`` codes; clear their Adam moments."""
    n = 0
    if inputs.shape[0] == 0:
        return 0
    with torch.no_grad():
        for g in range(cb.num_groups):
            ids = dead[g].nonzero().flatten()
            if ids.numel() == 0:
                continue
            rows = torch.randint(inputs.shape[0], (ids.numel(),), generator=gen).to(inputs.device)
            new = inputs[rows, g].to(cb.codes.dtype)
            new = new + 0.01 * new.std() * torch.randn(new.shape, generator=gen).to(new)
            cb.codes[g, ids] = new
            n += ids.numel()
        state = optimizer.state.get(cb.codes) if optimizer is not None else None
        if state:
            for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                buf = state.get(key)
                if isinstance(buf, torch.Tensor) and buf.shape == cb.codes.shape:
                    buf[dead] = 0
    return n


class _CodebookWatch(Callback):
    """train_codebook_model's step and callbacks: the LM + reconstruction loss, code use,
    dead-code replacement, and a history record every ``log_every`` steps."""

    def __init__(self, layers, reconstruction_weight, dead_code_steps, log_every, gen, logits_fn, was_trainable):
        self.layers, self.weight, self.dead_code_steps, self.log_every = layers, reconstruction_weight, dead_code_steps, log_every
        self.gen, self.logits_fn, self.was_trainable = gen, logits_fn, was_trainable
        self.loop: TrainLoop | None = None
        self.watch: _Watch | None = None
        self.history: list[dict] = []
        self.replaced = {n: 0 for n in layers}

    def _new_window(self):
        self.window = {"loss": 0.0, "lm_loss": 0.0, "reconstruction_loss": 0.0, "n": 0, "replaced": 0}
        for u in self.window_used.values():
            u.zero_()

    def step(self, batch):
        watch = self.watch
        b_ids = batch[0]
        b_mask = batch[1] if len(batch) > 1 else None
        watch.errors.clear()
        for u in watch.used.values():
            u.zero_()
        watch.mask = b_mask
        with self.loop.autocast():
            kwargs = {} if b_mask is None else {"attention_mask": b_mask}
            out = self.loop.model(b_ids, **kwargs)
            lm = _lm_loss(self.logits_fn(out), b_ids, b_mask)
            rec = torch.stack(watch.errors).mean() if watch.errors else lm.new_zeros(())
            loss = lm + self.weight * rec
        return loss, {"lm_loss": lm.detach(), "reconstruction_loss": rec.detach()}

    def on_train_begin(self, loop):
        # after accelerate placed the model: the bookkeeping lives on the codes' device
        layers = self.layers
        self.watch = _Watch(layers)
        self.last_used = {n: torch.zeros(cb.num_groups, cb.num_codes, dtype=torch.long, device=cb.codes.device)
                          for n, cb in layers.items()}
        self.window_used = {n: torch.zeros_like(u, dtype=torch.bool) for n, u in self.last_used.items()}
        self._new_window()
        loop.model.train()
        self.watch.__enter__()

    def on_step_end(self, loop, loss, stats):
        step, watch = loop.global_step, self.watch
        multi = loop.num_processes > 1
        for name, used in watch.used.items():
            if multi:  # a code is used when any process used it: every process replaces the same codes
                used = loop.reduce(used.to(torch.int32), "max").bool()
            self.last_used[name][used] = step
            self.window_used[name] |= used
        if self.dead_code_steps is not None:
            for name, cb in self.layers.items():
                dead = (step - self.last_used[name]) >= self.dead_code_steps
                if dead.any() and name in watch.inputs:
                    n = _replace_dead(cb, dead, watch.inputs[name], loop.optimizer, self.gen)
                    if multi:  # the new codes come from this process's inputs: take the main process's
                        with torch.no_grad():
                            loop.broadcast(cb.codes.data)
                    self.last_used[name][dead] = step
                    self.replaced[name] += n
                    self.window["replaced"] += n
        w = self.window
        w["loss"] += loss.item()
        w["lm_loss"] += stats["lm_loss"].item()
        w["reconstruction_loss"] += stats["reconstruction_loss"].item()
        w["n"] += 1
        if step % self.log_every == 0 or step == loop.total_steps:
            if multi:  # means over the processes' steps
                for k in ("loss", "lm_loss", "reconstruction_loss", "n"):
                    w[k] = loop.reduce(w[k])
            n = w["n"]
            used_frac = (sum(int(u.sum()) for u in self.window_used.values())
                         / sum(u.numel() for u in self.window_used.values()))
            entry = {"step": step, "loss": w["loss"] / n, "lm_loss": w["lm_loss"] / n,
                     "reconstruction_loss": w["reconstruction_loss"] / n,
                     "codes_used": used_frac, "dead_codes_replaced": w["replaced"]}
            self.history.append(entry)
            loop.bar.set_postfix(lm=f"{entry['lm_loss']:.3f}", rec=f"{entry['reconstruction_loss']:.3f}",
                                 used=f"{used_frac:.2f}")
            self._new_window()

    def on_train_end(self, loop):
        if self.watch is not None:
            self.watch.__exit__(None, None, None)
        loop.model.eval()
        for p, flag in self.was_trainable:  # the model's own settings, as found
            p.requires_grad_(flag)
        with contextlib.suppress(Exception):
            loop.accelerator.free_memory()


def train_codebook_model(model: nn.Module, data: torch.Tensor | Mapping[str, torch.Tensor] | Dataset, *, steps: int | None = None, epochs: int = 1, batch_size: int = 16,
                         lr: float = 1e-3, codebook_lr: float | None = None, weight_decay: float = 0.0,
                         reconstruction_weight: float = 1.0, dead_code_steps: int | None = 100,
                         train_model: bool = True, max_grad_norm: float | None = 1.0,
                         warmup_steps: int = 0, log_every: int = 50, mixed_precision: str = "no",
                         cpu: bool = False, seed: int = 0, show_progress: bool = True,
                         logits_fn: Callable[[Any], torch.Tensor] | None = None) -> CodebookTrainResult:
    """Train ``model`` (wrapped with codebooks) on token sequences ``data``; see the module docstring.

    Args:
        data: ``[N, T]`` token ids, or a dict / ``datasets.Dataset`` with ``input_ids`` (and
            ``attention_mask``: padded positions are left out of both losses).
        steps: optimiser steps (default: ``epochs`` passes over ``data``).
        lr / codebook_lr: learning rates of the model and of the codebooks (default ``lr``);
            AdamW with a cosine schedule after ``warmup_steps`` linear warm-up.
        reconstruction_weight: weight of the codebook reconstruction term.
        dead_code_steps: steps without use after which a code is replaced (``None``: never).
        train_model: also train the model's own weights (``False``: codebooks only).
        logits_fn(outputs) -> ``[B, T, vocab]`` logits (default ``outputs.logits`` or
            ``outputs[0]``).
    Returns a :class:`CodebookTrainResult`; the model is left in ``eval()`` mode.
    """
    cbs = get_codebooks(model)
    layers = {name: cbs[name.replace(".", "-")] for name in cbs.names()}
    ids, mask = _token_tensor(data)
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("log_every", log_every)):
        check_positive_int(value, f"train_codebook_model: {name}")
    check_optional_positive_int(steps, "train_codebook_model: steps")
    check_optional_positive_int(dead_code_steps, "train_codebook_model: dead_code_steps")
    check_number(reconstruction_weight, "train_codebook_model: reconstruction_weight", non_negative=True)
    cb_params = [p for cb in layers.values() for p in cb.parameters()]
    cb_ids = {id(p) for p in cb_params}
    model_params = [p for p in model.parameters() if id(p) not in cb_ids]
    was_trainable = [(p, p.requires_grad) for p in model.parameters()]
    for p in model_params:
        p.requires_grad_(bool(train_model))
    for p in cb_params:
        p.requires_grad_(True)
    groups = [{"params": cb_params, "lr": codebook_lr if codebook_lr is not None else lr, "weight_decay": 0.0}]
    if train_model and model_params:
        groups.append({"params": model_params, "lr": lr, "weight_decay": weight_decay})
    optimizer = torch.optim.AdamW(groups)

    gen = torch.Generator().manual_seed(seed)
    rows = torch.utils.data.TensorDataset(ids) if mask is None else torch.utils.data.TensorDataset(ids, mask)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, generator=gen, drop_last=False)
    watch = _CodebookWatch(layers, reconstruction_weight, dead_code_steps, log_every, gen,
                           logits_fn or (lambda out: out.logits if hasattr(out, "logits") else out[0]),
                           was_trainable)
    loop = TrainLoop(
        watch.step, model=model, optimizer=optimizer, loader=loader,
        epochs=None if steps is not None else epochs, max_steps=steps, scheduler="cosine",
        warmup_steps=warmup_steps, max_grad_norm=max_grad_norm,
        clip_parameters=[p for p in model.parameters() if p.requires_grad], mixed_precision=mixed_precision,
        cpu=cpu, callbacks=[watch], show_progress=show_progress, desc="training codebooks", postfix_every=None,
    )
    watch.loop = loop
    run = loop.run()
    return CodebookTrainResult(history=watch.history, global_step=run.global_step, replaced=watch.replaced,
                               seconds=run.seconds)
