"""Linear and small MLP probes trained on activation datasets, and sweeps over sites.

A probe reads one activation column of a dataset written by
:func:`~pyvene_like.analysis.collect_activations` and predicts its ``label`` column. The
split is ``datasets``' ``train_test_split`` (seeded, stratified when labels are a
``ClassLabel``); training is minibatch Adam with cross-entropy, and the
history records train/test accuracy and train loss after every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError

_KINDS = ("linear", "mlp")


@dataclass
class ProbeResult:
    """A trained probe, the column it reads, and its per-epoch history."""

    probe: nn.Module
    column: str
    history: dict = field(default_factory=dict)
    num_train: int = 0
    num_test: int = 0

    @property
    def train_accuracy(self) -> float:
        return self.history["train_accuracy"][-1]

    @property
    def test_accuracy(self) -> float:
        return self.history["test_accuracy"][-1]


def make_probe(kind: str, width: int, num_classes: int, hidden: int = 64) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    raise ConfigError(f"train_probe: kind={kind!r}; accepted: {', '.join(map(repr, _KINDS))}")


def _activation_columns(dataset, label_column: str) -> list[str]:
    import json

    from .collect import FORMAT

    try:
        doc = json.loads(dataset.info.description or "")
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return [c for c in doc["columns"] if c in dataset.column_names]
    # Any dataset: its fixed-width float list columns.
    feats = dataset.features
    return [c for c in dataset.column_names
            if c != label_column and getattr(feats[c], "length", -1) not in (-1, None)]


def _num_classes(dataset, label_column: str, labels: torch.Tensor) -> int:
    feat = dataset.features[label_column]
    n = getattr(feat, "num_classes", None)
    return int(n) if n else int(labels.max()) + 1


def train_probe(dataset, column: str | None = None, *, label_column: str = "label", kind: str = "linear",
                hidden: int = 64, test_size: float = 0.2, epochs: int = 50, lr: float = 1e-2,
                batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0, device=None) -> ProbeResult:
    """Train a probe on ``dataset[column]`` → ``dataset[label_column]``.

    ``column`` may be left out when the dataset has exactly one activation column. Returns a
    :class:`ProbeResult`: ``probe`` (an ``nn.Module`` on activations ``[..., width]``, in eval
    mode), ``history`` (``train_accuracy``, ``test_accuracy``, ``train_loss`` per epoch).
    """
    if label_column not in dataset.column_names:
        raise ConfigError(
            f"train_probe: the dataset has no {label_column!r} column (columns: {dataset.column_names}); "
            "collect with labels=, or name the label column with label_column="
        )
    cols = _activation_columns(dataset, label_column)
    if column is None:
        if len(cols) != 1:
            raise ConfigError(f"train_probe: the dataset has {len(cols)} activation columns; pick one with "
                              f"column= (accepted: {cols})")
        column = cols[0]
    if column not in dataset.column_names:
        from ..errors import did_you_mean

        raise ConfigError(f"train_probe: column {column!r} is not in the dataset (activation columns: "
                          f"{cols}).{did_you_mean(column, cols)}")
    if kind not in _KINDS:
        make_probe(kind, 1, 1)
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"train_probe: test_size={test_size}; accepted: a fraction in (0, 1)")
    if len(dataset) < 2:
        raise ConfigError(f"train_probe: {len(dataset)} examples; a train/test split needs at least 2")
    stratify = label_column if hasattr(dataset.features[label_column], "num_classes") else None
    try:
        split = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column=stratify)
    except ValueError:  # too few examples per class to stratify
        split = dataset.train_test_split(test_size=test_size, seed=seed)
    parts = {}
    for name in ("train", "test"):
        d = split[name].select_columns([column, label_column]).with_format("torch")[:]
        parts[name] = (d[column].float(), d[label_column].long())
    x_tr, y_tr = parts["train"]
    x_te, y_te = parts["test"]
    n_classes = _num_classes(dataset, label_column, torch.cat([y_tr, y_te]))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = make_probe(kind, x_tr.shape[1], n_classes, hidden)
    if device is not None:
        probe.to(device)
        x_tr, y_tr, x_te, y_te = (t.to(device) for t in (x_tr, y_tr, x_te, y_te))
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history = {"train_accuracy": [], "test_accuracy": [], "train_loss": []}

    def accuracy(x, y):
        with torch.no_grad():
            return (probe(x).argmax(-1) == y).float().mean().item() if len(y) else float("nan")

    for _ in range(epochs):
        probe.train()
        order = torch.randperm(len(y_tr), generator=g).to(x_tr.device)
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            loss = loss_fn(probe(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        probe.eval()
        history["train_loss"].append(total / max(len(y_tr), 1))
        history["train_accuracy"].append(accuracy(x_tr, y_tr))
        history["test_accuracy"].append(accuracy(x_te, y_te))
    return ProbeResult(probe, column, history, len(y_tr), len(y_te))


def probe_sweep(dataset, columns=None, *, plot=None, title: str | None = None, **probe_kwargs) -> dict:
    """Train one probe per activation column; ``{column: ProbeResult}`` in column order.

    ``plot`` may be a file path (the figure is saved there) or a matplotlib ``Axes`` to draw
    on: final test (and train) accuracy per site, with chance level (``1 / classes``) dashed.
    """
    label_column = probe_kwargs.get("label_column", "label")
    if columns is None:
        columns = _activation_columns(dataset, label_column)
        if not columns:
            raise ConfigError("probe_sweep: the dataset has no activation columns")
    results = {c: train_probe(dataset, c, **probe_kwargs) for c in columns}
    if plot is not None:
        plot_sweep(results, plot, title=title, chance=_chance(dataset, label_column))
    return results


def _chance(dataset, label_column: str) -> float | None:
    n = getattr(dataset.features.get(label_column), "num_classes", None)
    return 1.0 / n if n else None


def plot_sweep(results: dict, target, *, title: str | None = None, chance: float | None = None):
    """Plot per-site accuracies of :func:`probe_sweep`; ``target`` is a path or an ``Axes``."""
    import matplotlib.pyplot as plt

    names = list(results)
    test = [results[c].test_accuracy for c in names]
    train = [results[c].train_accuracy for c in names]
    if hasattr(target, "plot"):
        ax, fig = target, None
    else:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5))
    xs = range(len(names))
    ax.plot(xs, test, "o-", label="test")
    ax.plot(xs, train, "s--", alpha=0.6, label="train")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probe accuracy")
    ax.set_title(title or "probe accuracy per site")
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
        fig.savefig(target, dpi=120)
        plt.close(fig)
    return ax


__all__ = ["ProbeResult", "make_probe", "plot_sweep", "probe_sweep", "train_probe"]
