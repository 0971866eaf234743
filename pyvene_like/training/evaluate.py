"""Interchange-intervention accuracy (IIA) and factual accuracy, with tensor ops."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..engine.runner import call_model
from ..errors import ConfigError, ShapeError
from ..modes import evaluating
from ..validation import check_bool, check_positive_int
from .data import CounterfactualCollator, check_columns
from .distributed import gather_rows, process_state, shard_rows

if TYPE_CHECKING:
    from datasets import Dataset

    from ..model import IntervenableModel


def default_logits(outputs: Any) -> torch.Tensor:
    """Class scores from a model's outputs: ``.logits`` (HF) or the tensor itself; for
    sequence outputs ``[batch, seq, classes]`` the last position's."""
    logits = getattr(outputs, "logits", None)
    if logits is None:
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    if not isinstance(logits, torch.Tensor):
        raise ShapeError(
            f"outputs: cannot find logits in a {type(outputs).__name__}; pass logits_fn= to pick them"
        )
    return logits[:, -1] if logits.dim() == 3 else logits


def _check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if labels.shape != logits.shape[:1] or labels.dtype.is_floating_point:
        raise ShapeError(
            f"labels: expected class ids of shape [batch] = [{logits.shape[0]}] (integers) for logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)} {labels.dtype}; pass loss_fn= / "
            f"metric_fn= for other label layouts"
        )


def default_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class logits ``[batch, classes]`` against class ids ``[batch]``."""
    _check_labels(logits, labels)
    return F.cross_entropy(logits.float(), labels.to(logits.device))


def default_metric(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example correctness (argmax equals the label), a float tensor ``[batch]``."""
    _check_labels(logits, labels)
    return (logits.argmax(-1) == labels.to(logits.device)).float()


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. ``iia_per_id`` is keyed by id name when names were given."""

    iia: float
    iia_per_id: dict = field(default_factory=dict)
    factual_accuracy: float | None = None
    n_examples: int = 0
    n_per_id: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "iia": self.iia,
            "iia_per_id": dict(self.iia_per_id),
            "factual_accuracy": self.factual_accuracy,
            "n_examples": self.n_examples,
            "n_per_id": dict(self.n_per_id),
            **({"metrics": self.metrics} if self.metrics else {}),
        }


def _columns(dataset) -> dict:
    """All columns of a dataset as stacked tensors (one vectorised read)."""
    if isinstance(dataset, Mapping):
        return {k: torch.as_tensor(v) for k, v in dataset.items()}
    return dict(dataset.with_format("torch")[:])


def check_column_tensors(cols: dict, label: str, *, default_labels: bool) -> None:
    """Every column read as a tensor (``datasets`` gives a list for a column of ``None`` or
    strings), at least one example, and with the default loss/metric ``labels`` as one integer
    class id per example (a bool label is not a class id)."""
    for name, value in cols.items():
        if not isinstance(value, torch.Tensor):
            sample = value[:3] if isinstance(value, (list, tuple)) else value
            raise ShapeError(
                f"{label}: column {name!r} is not numeric (it reads as {type(value).__name__}, e.g. "
                f"{sample!r}); every column must hold numbers of one shape per example"
            )
        if (value.dtype.is_floating_point or value.dtype.is_complex) and value.numel():
            finite = torch.isfinite(value).reshape(len(value), -1).all(dim=1)
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0])
                raise ShapeError(
                    f"{label}: column {name!r} holds NaN or inf (first at row {row}); a non-finite input "
                    f"makes every loss and score NaN; clean or drop those rows"
                )
    if len(cols["labels"]) == 0:
        raise ConfigError(f"{label} is empty; give at least one counterfactual example")
    labels = cols["labels"]
    if default_labels and (labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex
                           or labels.dtype == torch.bool):
        raise ShapeError(
            f"{label}: column 'labels' has shape {tuple(labels.shape)} ({labels.dtype}); the default "
            f"loss and metric need integer class ids of shape [n_examples]; pass loss_fn= / metric_fn= "
            f"for other labels"
        )


def check_label_range(labels: torch.Tensor, n_classes: int, label: str) -> None:
    """Default metric/loss: class ids in ``0..n_classes-1`` (an id past the logits can never be
    predicted, so it would silently count as wrong)."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ShapeError(
            f"{label}: column 'labels' holds {bad}, but the model gives {n_classes} classes; accepted: "
            f"class ids 0..{n_classes - 1} (pass metric_fn= / loss_fn= for other labels)"
        )


def check_masks_used(dataset: Dataset | Mapping[str, Any], label: str, collator: CounterfactualCollator) -> None:
    """A mask column only reaches the model through ``input_key``: without it, refuse rather
    than silently run every example unmasked (a padded batch would then attend to its pads)."""
    names = dataset.keys() if isinstance(dataset, Mapping) else getattr(dataset, "column_names", ())
    masks = [c for c in ("attention_mask", "source_attention_mask") if c in names]
    if masks and collator.input_key is None:
        raise ConfigError(
            f"{label} has {masks} but input_key is None, so inputs are passed positionally and the masks "
            f"would be dropped; pass input_key='input_ids' (or the model's input name) to use them, or "
            f"remove the columns"
        )


def _take(cols: dict, idx) -> dict:
    return {k: v[idx] for k, v in cols.items()}


def _move(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _move(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [_move(v, device) for v in x]
    return x


def _device_of(intervenable) -> torch.device:
    p = next(intervenable.model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    intervenable: IntervenableModel,
    dataset: Dataset | Mapping[str, Any],
    subspaces: Mapping[int, Any] | None = None,
    batch_size: int = 1024,
    input_key: str | None = None,
    unit_locations: Any = 0,
    logits_fn: Callable | None = None,
    metric_fn: Callable | None = None,
    id_names: Mapping | None = None,
    factual: bool = True,
    collator: CounterfactualCollator | None = None,
) -> EvalResult:
    """IIA of ``intervenable`` on a counterfactual dataset, overall and per intervention id,
    plus the model's factual accuracy on the base inputs (``base_labels``).

    ``metric_fn(logits, labels)`` returns per-example scores ``[batch]`` (default: argmax
    equals label) that are averaged overall and per id; a metric returning a dict instead is
    called once on all logits and labels and reported under ``metrics``.

    Under a multi-process launch (``torchrun``, ``accelerate launch``) each process runs the
    model on its own contiguous share of the rows; the logits are gathered in row order, so
    every process returns the same result, on the whole set, each example counted once.
    """
    if collator is None:
        collator = CounterfactualCollator(
            subspaces, input_key=input_key, unit_locations=unit_locations,
            n_interventions=len(intervenable.interventions),
        )
    check_positive_int(batch_size, "evaluate: batch_size")
    check_bool(factual, "evaluate: factual")
    check_columns(dataset, "dataset", collator.subspace_tables is not None)
    check_masks_used(dataset, "dataset", collator)
    cols = _columns(dataset)
    check_column_tensors(cols, "dataset", default_labels=metric_fn is None)
    n = len(cols["labels"])
    logits_fn = logits_fn or default_logits
    metric = metric_fn or default_metric
    device = _device_of(intervenable)
    state = process_state()
    rows = shard_rows(n, state)  # all rows in one process; this process's share in several
    with evaluating(intervenable):
        cf_logits, base_logits = [], []
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size] if state is not None else slice(start, start + batch_size)
            b = _move(collator(_take(cols, part)), device)
            _, out = intervenable(
                b["base"], b["sources"], b["unit_locations"], subspaces=b["subspaces"],
            )
            cf_logits.append(logits_fn(out).float())
            if factual and "base_labels" in b:
                base_logits.append(logits_fn(call_model(intervenable.model, b["base"])).float())
    logits = gather_rows(torch.cat(cf_logits), n, state)
    labels = cols["labels"].to(logits.device)
    if metric_fn is None:
        check_label_range(labels, logits.shape[-1], "dataset")
    scores = metric(logits, labels)
    result = EvalResult(iia=float("nan"), n_examples=n)
    if isinstance(scores, Mapping):
        result.metrics = dict(scores)
        first = next(iter(scores.values()), float("nan"))
        result.iia = float(first)
    else:
        scores = torch.as_tensor(scores, dtype=torch.float, device=logits.device).reshape(-1)
        if scores.shape[0] != n:
            raise ShapeError(
                f"metric_fn: returned {scores.shape[0]} scores for {n} examples; return one per "
                f"example, or a dict of aggregate metrics"
            )
        result.iia = scores.mean().item()
        if "intervention_id" in cols:
            ids = cols["intervention_id"].to(scores.device)
            uniq = ids.unique()
            sums = torch.zeros(len(uniq), device=scores.device).index_add_(0, torch.searchsorted(uniq, ids), scores)
            counts = torch.bincount(torch.searchsorted(uniq, ids), minlength=len(uniq))
            for k, s, c in zip(uniq.tolist(), sums.tolist(), counts.tolist()):
                name = id_names.get(k, k) if id_names else k
                result.iia_per_id[name] = s / c
                result.n_per_id[name] = c
    if base_logits:
        bl = gather_rows(torch.cat(base_logits), n, state)
        result.factual_accuracy = default_metric(bl, cols["base_labels"].to(bl.device)).mean().item()
    return result
