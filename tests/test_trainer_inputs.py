"""The Trainer refuses bad arguments and data before touching the model, and gives the model
back as found (requires_grad, train/eval flags) whether training ends or fails (issue 13)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_training import IDS, MLP, SUBSPACES, rotated

import pyvene_like as pv


@pytest.fixture(scope="module")
def ds():
    return pv.generate_counterfactual_dataset(pv.hierarchical_equality(), 64, IDS, seed=0)


def state(im):
    return ([p.requires_grad for p in im.model.parameters()], [m.training for m in im.modules()],
            [dict(m._forward_hooks) for m in im.model.modules()])


def trainer(im, data, **kw):
    return pv.Trainer(im, data, subspaces=SUBSPACES, epochs=1, batch_size=32, show_progress=False, **kw)


@pytest.mark.parametrize("kw, err, match", [
    (dict(lr=-1), pv.ConfigError, "lr must be a non-negative finite number, got -1"),
    (dict(lr=float("nan")), pv.ConfigError, "lr must be a non-negative finite number, got nan"),
    (dict(weight_decay=-0.1), pv.ConfigError, "weight_decay must be a non-negative finite number"),
    (dict(warmup_ratio=1.5), pv.ConfigError, r"warmup_ratio must be a fraction of the steps in 0\.\.1, got 1\.5"),
    (dict(max_grad_norm=0), pv.ConfigError, "max_grad_norm must be a positive finite number, got 0"),
    (dict(optimizer=42), pv.ConfigError, "optimizer: expected None"),
    (dict(scheduler="nope"), pv.ConfigError, "scheduler: 'nope' is not a transformers schedule"),
    (dict(mixed_precision="fp99"), pv.ConfigError, "mixed_precision: got 'fp99'"),
])
def test_bad_arguments_are_refused_and_leave_the_model_as_found(ds, kw, err, match):
    im = rotated(MLP())
    im.model.eval()
    before = state(im)
    with pytest.raises(err, match=match):
        trainer(im, ds, **kw)
    assert state(im) == before


@pytest.mark.parametrize("label, match", [
    (5, r"column 'labels' holds class 5, but the model gives 2 logits \(accepted class ids: 0\.\.1\)"),
    (-100, r"column 'labels' holds -100; the default loss takes class ids >= 0"),
    (-1, r"column 'labels' holds -1"),
])
def test_labels_outside_the_classes_are_refused(ds, label, match):
    im = rotated(MLP())
    before = state(im)
    bad = ds.map(lambda r: {"labels": label})
    with pytest.raises(pv.ShapeError, match=match):
        trainer(im, bad).train()
    assert state(im) == before  # a failure inside the run gives the flags back too


def test_empty_dataset_and_dropped_masks(ds):
    im = rotated(MLP())
    with pytest.raises(pv.ConfigError, match="train_dataset is empty"):
        trainer(im, ds.select([]))
    masked = ds.add_column("attention_mask", [[1] * 16] * len(ds))
    with pytest.raises(pv.ConfigError, match=r"train_dataset has \['attention_mask'\] but input_key is None"):
        trainer(im, masked)
    with pytest.raises(pv.ConfigError, match=r"dataset has \['attention_mask'\] but input_key is None"):
        pv.evaluate(im, masked, subspaces=SUBSPACES)


def test_a_run_gives_requires_grad_back_and_freezes_only_while_it_runs(ds):
    im = rotated(MLP())
    seen = []
    im.model.layers[0][0].weight.register_hook(lambda g: seen.append("model grad"))
    before = state(im)
    assert all(before[0])  # the user's model is trainable
    trainer(im, ds).train()
    assert state(im)[0] == before[0] and not seen  # frozen during the run: no gradient reached it


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=3),
                 st.booleans(), st.none()))
def test_generated_learning_rates(lr):
    im = rotated(MLP())
    data = {"input_ids": torch.zeros(4, 16), "source_input_ids": torch.zeros(4, 1, 16),
            "labels": torch.zeros(4, dtype=torch.long), "intervention_id": torch.zeros(4, dtype=torch.long)}
    before = state(im)
    ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr == lr and abs(lr) != float("inf") and lr >= 0
    if ok:
        trainer(im, data, lr=lr)
    else:
        with pytest.raises(pv.PyveneLikeError, match="lr must be a non-negative finite number"):
            trainer(im, data, lr=lr)
    assert state(im) == before
