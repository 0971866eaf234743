"""Train a sparse autoencoder on collected activations, for models with no published SAE.

A plain trainer in the spirit of SAELens's, on the library's training loop
(:class:`~pyvene_like.training.loop.TrainLoop`: ``accelerate`` device placement and mixed
precision, a ``tqdm`` bar):

* architectures ``"topk"`` (loss: reconstruction only; sparsity is the k) and ``"relu"``
  (loss: reconstruction ``+ l1 * sum_j f_j ||W_dec[j]||``);
* reconstruction loss: squared error summed over the width, averaged over the batch;
* initialisation: decoder rows random unit vectors, ``W_enc = W_dec.T``, ``b_enc = 0`` and
  ``b_dec`` the data mean (not the geometric median);
* decoder rows kept unit-norm: before each step the gradient's component along each row is
  removed, after it the rows are renormalised;
* a feature is *dead* when it fired on no example of the last epoch; the count is in the history.

Under ``torchrun`` / ``accelerate launch`` it trains data parallel (each process a share of the
batches, gradients averaged); the history's sums and the fired features are reduced over the
processes, so every process returns the same SAE and history.

The result is an ordinary :class:`~pyvene_like.sae.SAE` (parameters frozen), usable by the
steering functions and every SAE intervention, and saved with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError, ShapeError, accepted, did_you_mean
from ..training.loop import Callback, TrainLoop
from ..validation import check_number, check_positive_int, is_int
from .sae import SAE

if TYPE_CHECKING:
    from datasets import Dataset

ARCHITECTURES = ("topk", "relu")


@dataclass
class SAETrainResult:
    """The trained ``sae`` and one ``history`` entry per epoch: ``loss``, ``mse`` (per example),
    ``fvu`` (fraction of variance unexplained over the epoch), ``l0`` (mean features firing per
    example) and ``dead`` (features that fired on no example of the epoch)."""

    sae: SAE
    history: list[dict] = field(default_factory=list)

    @property
    def dead_features(self) -> int:
        return self.history[-1]["dead"] if self.history else 0


def _as_matrix(activations, column: str) -> torch.Tensor:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(activations, datasets.Dataset):
        if column not in activations.column_names:
            raise ConfigError(
                f"train_sae: the dataset has no column {column!r}; columns: {accepted(activations.column_names)} "
                f"(pass column=...)"
            )
        activations = activations.with_format("torch", columns=[column])[:][column]
    if isinstance(activations, (list, tuple)):
        if not activations:
            raise ConfigError("train_sae: activations is an empty list")
        if not all(isinstance(a, torch.Tensor) for a in activations):
            raise ConfigError("train_sae: a list of activations must hold tensors ([n_tokens, d_in] each)")
        activations = torch.cat([a.reshape(-1, a.shape[-1]) for a in activations])
    if not isinstance(activations, torch.Tensor):
        raise ConfigError(
            f"train_sae: activations must be a [n, d_in] tensor, a list of [n_i, d_in] tensors or a "
            f"datasets.Dataset, got {type(activations).__name__}"
        )
    if activations.dim() != 2 or activations.shape[0] < 2 or activations.shape[1] < 1:
        raise ShapeError(f"train_sae: activations must be [n >= 2, d_in], got shape {list(activations.shape)}")
    if not activations.is_floating_point():
        raise ShapeError(f"train_sae: activations must be floating point, got {activations.dtype}")
    if not torch.isfinite(activations).all():
        raise ShapeError("train_sae: activations hold NaN or inf values")
    return activations.detach().float()


class _Reconstruct(nn.Module):
    """The SAE's training forward, features and reconstruction, as one module call: under data
    parallel the call must go through the wrapper (DDP), which syncs the gradients it makes."""

    def __init__(self, sae: SAE):
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.sae.encode(x)
        return feats, feats @ self.sae.W_dec + self.sae.b_dec


class _UnitDecoder(Callback):
    """train_sae's step and callbacks: the reconstruction (+ L1) loss; decoder rows kept on the
    unit sphere (the gradient along each row removed before the step, the rows renormalised
    after it); per epoch, the features that never fired."""

    def __init__(self, d_sae: int, architecture: str, l1: float, total_var: float):
        self.d_sae, self.architecture, self.l1, self.total_var = d_sae, architecture, l1, total_var
        self.loop: TrainLoop | None = None  # set once the loop exists (its step function is ours)
        self.fired: torch.Tensor | None = None

    def step(self, batch):
        (x,) = batch
        inner = self.loop.unwrapped_model.sae
        with self.loop.autocast():
            feats, recon = self.loop.model(x)
            sq = (recon.float() - x).pow(2).sum(-1)
            loss = sq.mean()
            if self.architecture == "relu" and self.l1:
                loss = loss + self.l1 * (feats.float() * inner.W_dec.norm(dim=1)).sum(-1).mean()
        with torch.no_grad():
            active = feats > 0
            self.fired |= active.any(0)
            n = x.shape[0]
            stats = {"loss": float(loss) * n, "sq": float(sq.sum()), "l0": float(active.sum()), "n": n}
        return loss, stats

    def on_epoch_begin(self, loop):
        self.fired = torch.zeros(self.d_sae, dtype=torch.bool, device=loop.device)

    @torch.no_grad()
    def on_before_optimizer_step(self, loop):
        w = loop.unwrapped_model.sae.W_dec
        if w.grad is not None:  # no gradient along a decoder row ...
            w.grad -= (w.grad * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def on_step_end(self, loop, loss, stats):
        w = loop.unwrapped_model.sae.W_dec  # ... and renormalise what the step left
        w /= w.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def on_epoch_end(self, loop, entry):
        s, n = loop.epoch_sums, loop.epoch_sums["n"]  # summed over processes by the loop
        self.fired = loop.reduce(self.fired.to(torch.int32), "max").bool()
        entry.update({"epoch": loop.epoch, "loss": s["loss"] / n, "mse": s["sq"] / n,
                      "fvu": s["sq"] / self.total_var if self.total_var > 0 else float("nan"),
                      "l0": s["l0"] / n, "dead": int((~self.fired).sum())})
        loop.bar.set_postfix(loss=f"{entry['loss']:.4g}", fvu=f"{entry['fvu']:.3f}", dead=entry["dead"])


def train_sae(activations: torch.Tensor | Sequence[torch.Tensor] | Dataset, d_sae: int, *, architecture: str = "topk", k: int | None = None, l1: float = 1e-3,
              epochs: int = 10, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
              column: str = "activations", hook_name: str | None = None, mixed_precision: str = "no",
              show_progress: bool = True) -> SAETrainResult:
    """Train an :class:`SAE` of ``d_sae`` features on ``activations`` (``[n, d_in]``, a list of
    ``[n_i, d_in]`` as :func:`~pyvene_like.sae.prompt_activations` returns, or a
    ``datasets.Dataset`` with the vectors in ``column``). ``k`` (``"topk"``) or ``l1``
    (``"relu"``) sets the sparsity. ``hook_name`` is stored on the SAE for the record."""

    if architecture not in ARCHITECTURES:
        raise ConfigError(f"train_sae: architecture {architecture!r} is not supported; accepted: "
                          f"{accepted(ARCHITECTURES)}.{did_you_mean(str(architecture), ARCHITECTURES)}")
    check_positive_int(d_sae, "train_sae: d_sae")
    check_positive_int(epochs, "train_sae: epochs")
    check_positive_int(batch_size, "train_sae: batch_size")
    check_number(lr, "train_sae: lr", positive=True)
    if architecture == "topk":
        if not is_int(k) or not 1 <= k <= d_sae:
            raise ConfigError(f"train_sae: architecture 'topk' needs k, an int in 1..d_sae={d_sae}, got k={k!r}")
    else:
        if k is not None:
            raise ConfigError(f"train_sae: k={k!r} is only used by architecture 'topk'")
        check_number(l1, "train_sae: l1", non_negative=True)
    x = _as_matrix(activations, column)
    d_in = x.shape[1]

    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, architecture, k=k if architecture == "topk" else None, hook_name=hook_name)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(x.mean(0))
    sae.requires_grad_(True)

    loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    total_var = float((x - x.mean(0)).pow(2).sum())
    unit = _UnitDecoder(d_sae, architecture, l1, total_var)
    loop = TrainLoop(unit.step, model=_Reconstruct(sae), optimizer=optimizer, loader=loader, epochs=epochs,
                     mixed_precision=mixed_precision, callbacks=[unit], show_progress=show_progress,
                     desc="train_sae")
    unit.loop = loop
    run = loop.run()
    out = loop.unwrapped_model.sae.cpu().requires_grad_(False)
    return SAETrainResult(out, run.history)
