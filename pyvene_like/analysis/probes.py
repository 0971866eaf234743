"""Linear and small MLP probes trained on activation datasets, and sweeps over sites.

A probe reads one activation column of a dataset written by
:func:`~pyvene_like.analysis.collect_activations` and predicts its ``label`` column. The
split is ``datasets``' ``train_test_split`` (seeded, stratified when labels are a
``ClassLabel``); training is minibatch Adam with cross-entropy on the library's training loop
(:class:`~pyvene_like.training.loop.TrainLoop`, in plain PyTorch where the probe is), and the
history records train/test accuracy and train loss after every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..modes import evaluating
from ..training.loop import Callback, TrainLoop

_KINDS = ("linear", "mlp")


@dataclass
class ProbeResult:
    """A trained probe, the column it reads, and its per-epoch history."""

    probe: nn.Module
    column: str
    history: dict = field(default_factory=dict)
    num_train: int = 0
    num_test: int = 0
    shuffled_labels: bool = False
    test_groups: list | None = None

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


def _check_column(dataset, column: str, fn: str, what: str = "dataset") -> None:
    if column not in dataset.column_names:
        from ..errors import did_you_mean

        raise ConfigError(f"{fn}: column {column!r} is not in the {what} (columns: {dataset.column_names})."
                          f"{did_you_mean(column, dataset.column_names)}")


def _tensors(dataset, column: str, label_column: str):
    d = dataset.select_columns([column, label_column]).with_format("torch")[:]
    return d[column].float(), d[label_column].long()


def _group_split(dataset, split_by: str, test_groups, test_size: float, seed: int):
    """Row indices (train, test) with every row of a test group in test; and the test groups."""
    _check_column(dataset, split_by, "train_probe", "dataset (split_by=)")
    values = list(dataset[split_by])
    groups = list(dict.fromkeys(values))  # order of first appearance
    if len(groups) < 2:
        raise ConfigError(f"train_probe: split_by={split_by!r} has {len(groups)} distinct value(s); a group "
                          "split needs at least 2")
    if test_groups is None:
        n_test = min(max(1, round(test_size * len(groups))), len(groups) - 1)
        rng = torch.Generator().manual_seed(seed)
        test_groups = [groups[i] for i in sorted(torch.randperm(len(groups), generator=rng)[:n_test].tolist())]
    else:
        test_groups = list(test_groups)
        missing = [g for g in test_groups if g not in groups]
        if missing or not test_groups or len(set(test_groups)) == len(groups):
            raise ConfigError(f"train_probe: test_groups={test_groups!r}; accepted: some but not all values of "
                              f"{split_by!r} ({groups[:10]}{' ...' if len(groups) > 10 else ''})")
    held = set(test_groups)
    test = [i for i, v in enumerate(values) if v in held]
    train = [i for i, v in enumerate(values) if v not in held]
    return train, test, test_groups


def train_probe(dataset, column: str | None = None, *, label_column: str = "label", kind: str = "linear",
                hidden: int = 64, test_size: float = 0.2, epochs: int = 50, lr: float = 1e-2,
                batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0, device=None,
                split_by: str | None = None, test_groups=None, test_dataset=None,
                shuffle_labels: bool = False) -> ProbeResult:
    """Train a probe on ``dataset[column]`` → ``dataset[label_column]``.

    ``column`` may be left out when the dataset has exactly one activation column. Returns a
    :class:`ProbeResult`: ``probe`` (an ``nn.Module`` on activations ``[..., width]``, in eval
    mode), ``history`` (``train_accuracy``, ``test_accuracy``, ``train_loss`` per epoch).

    The test rows are, by default, a random ``test_size`` share (stratified by class).
    ``split_by="template"`` holds out whole groups instead: every row whose ``template`` is a
    test group goes to test (``test_groups=`` names them; by default a seeded ``test_size``
    share of the distinct values). ``test_dataset=`` trains on all of ``dataset`` and tests on
    that one. ``shuffle_labels=True`` permutes the training labels (seeded by ``seed``) and
    leaves the test labels true: the baseline of a probe that can only memorise.
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
    if test_dataset is not None and split_by is not None:
        raise ConfigError("train_probe: split_by= and test_dataset= both given; accepted: one way to choose "
                          "the test rows")
    if test_groups is not None and split_by is None:
        raise ConfigError("train_probe: test_groups= needs split_by=<column> (the column the groups are values of)")
    held_groups = None
    if test_dataset is not None:
        for c in (column, label_column):
            _check_column(test_dataset, c, "train_probe", "test_dataset")
        _check_same_classes(dataset, test_dataset, label_column, "train_probe")
        if len(dataset) < 1:
            raise ConfigError("train_probe: the dataset is empty")
        (x_tr, y_tr), (x_te, y_te) = _tensors(dataset, column, label_column), _tensors(test_dataset, column, label_column)
    else:
        if len(dataset) < 2:
            raise ConfigError(f"train_probe: {len(dataset)} examples; a train/test split needs at least 2")
        if split_by is not None:
            tr_idx, te_idx, held_groups = _group_split(dataset, split_by, test_groups, test_size, seed)
            split = {"train": dataset.select(tr_idx), "test": dataset.select(te_idx)}
        else:
            stratify = label_column if hasattr(dataset.features[label_column], "num_classes") else None
            try:
                split = dataset.train_test_split(test_size=test_size, seed=seed, stratify_by_column=stratify)
            except ValueError:  # too few examples per class to stratify
                split = dataset.train_test_split(test_size=test_size, seed=seed)
        x_tr, y_tr = _tensors(split["train"], column, label_column)
        x_te, y_te = _tensors(split["test"], column, label_column)
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise ConfigError(f"train_probe: column {column!r} is {x_tr.shape[1]} wide in the dataset but "
                          f"{x_te.shape[1]} in test_dataset")
    n_classes = _num_classes(dataset, label_column, torch.cat([y_tr, y_te]))
    g = torch.Generator().manual_seed(seed)
    if shuffle_labels:
        y_tr = y_tr[torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed + 1))]
    torch.manual_seed(seed)
    probe = make_probe(kind, x_tr.shape[1], n_classes, hidden)
    if device is not None:
        probe.to(device)
        x_tr, y_tr, x_te, y_te = (t.to(device) for t in (x_tr, y_tr, x_te, y_te))
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    def step(idx):
        loss = loss_fn(probe(x_tr[idx]), y_tr[idx])
        return loss, {"loss": loss.item() * len(idx)}

    loop = TrainLoop(step, model=probe, optimizer=opt, loader=_Batches(len(y_tr), batch_size, g, x_tr.device),
                     epochs=epochs, use_accelerate=False, callbacks=[_ProbeEpochs(probe, x_tr, y_tr, x_te, y_te)],
                     show_progress=False)
    run = loop.run()
    history = {k: [e[k] for e in run.history] for k in ("train_accuracy", "test_accuracy", "train_loss")}
    return ProbeResult(probe, column, history, len(y_tr), len(y_te), shuffle_labels, held_groups)


class _Batches:
    """Index batches of one seeded permutation per pass (drawn when the pass starts)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device):
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).to(self.device)
        for s in range(0, self.n, self.batch_size):
            yield order[s:s + self.batch_size]


class _ProbeEpochs(Callback):
    """Train mode during an epoch; after it, the epoch's loss and train / test accuracy."""

    def __init__(self, probe, x_tr, y_tr, x_te, y_te):
        self.probe, self.train_xy, self.test_xy = probe, (x_tr, y_tr), (x_te, y_te)

    def on_epoch_begin(self, loop):
        self.probe.train()

    def on_epoch_end(self, loop, entry):
        self.probe.eval()
        n = len(self.train_xy[1])
        entry["train_loss"] = loop.epoch_sums.get("loss", 0.0) / max(n, 1)
        entry["train_accuracy"] = _accuracy(self.probe, *self.train_xy)
        entry["test_accuracy"] = _accuracy(self.probe, *self.test_xy)


def _accuracy(probe: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (probe(x).argmax(-1) == y).float().mean().item() if len(y) else float("nan")


def _check_same_classes(dataset, other, label_column: str, fn: str) -> None:
    a = getattr(dataset.features.get(label_column), "names", None)
    b = getattr(other.features.get(label_column), "names", None)
    if a is not None and b is not None and a != b:
        raise ConfigError(f"{fn}: the label classes differ between the datasets ({a[:5]}... vs {b[:5]}...); "
                          "collect both with the same class_names=")


def evaluate_probe(result, dataset, column: str | None = None, *, label_column: str = "label") -> float:
    """Accuracy of a trained probe (a :class:`ProbeResult` or an ``nn.Module``) on ``dataset``.

    ``column`` defaults to the result's column; it is needed for a bare module.
    """
    probe = result.probe if isinstance(result, ProbeResult) else result
    if not isinstance(probe, nn.Module):
        raise ConfigError(f"evaluate_probe: got {type(result).__name__}; accepted: a ProbeResult or an nn.Module")
    if column is None:
        if not isinstance(result, ProbeResult):
            raise ConfigError("evaluate_probe: column= is needed with a bare probe module")
        column = result.column
    for c in (column, label_column):
        _check_column(dataset, c, "evaluate_probe")
    x, y = _tensors(dataset, column, label_column)
    param = next(probe.parameters(), None)
    if param is not None:
        width = param.shape[-1]
        if x.shape[1] != width:
            raise ConfigError(f"evaluate_probe: column {column!r} is {x.shape[1]} wide; the probe takes {width}")
        x, y = x.to(param.device), y.to(param.device)
    with evaluating(probe):
        return _accuracy(probe, x, y)


def probe_sweep(dataset, columns=None, *, plot=None, title: str | None = None, **probe_kwargs) -> dict:
    """Train one probe per activation column; ``{column: ProbeResult}`` in column order.

    ``probe_kwargs`` go to :func:`train_probe` (``split_by=``, ``test_dataset=``,
    ``shuffle_labels=True`` for a baseline sweep, ...).

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


