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


# -- location and id columns ---------------------------------------------------------------------------
def _with(ds, **cols):
    for name, value in cols.items():
        if name in ds.column_names:
            ds = ds.remove_columns(name)
        ds = ds.add_column(name, value)
    return ds.with_format("torch")


@pytest.mark.parametrize("cols, err, match", [
    (dict(base_locations=[0] * 64), pv.ShapeError,
     r"train_dataset: column 'base_locations' has shape \(64,\), dtype torch.int64; accepted: integer positions "
     r"shaped \[n_examples, n_interventions, n_units\]"),
    (dict(base_locations=[[0, 0]] * 64), pv.ShapeError, r"column 'base_locations' has shape \(64, 2\)"),
    (dict(base_locations=[[[0.0]]] * 64), pv.ShapeError, r"column 'base_locations' has shape \(64, 1, 1\), dtype torch.float"),
    (dict(base_locations=[[[True]]] * 64), pv.ShapeError, r"dtype torch.bool"),
    (dict(base_locations=[[[0], [0]]] * 64), pv.ShapeError,
     r"column 'base_locations' has positions for 2 intervention\(s\) \(shape \(64, 2, 1\)\), but the model has 1"),
    (dict(source_locations=[[[0]]] * 64), pv.ConfigError, r"has a 'source_locations' column but no 'base_locations'"),
    (dict(base_locations=[[[0]]] * 64, source_locations=[[0]] * 64), pv.ShapeError,
     r"column 'source_locations' has shape \(64, 1\)"),
    (dict(intervention_id=[0.0, 1.0, 2.0, 0.5] * 16), pv.ShapeError,
     r"intervention_id: expected one integer id per example \(shape \[n_examples\]\), got shape \(64,\), dtype torch.float"),
])
def test_mis_shaped_location_and_id_columns_are_refused_before_training(ds, cols, err, match):
    """A 1-d location column failed with a raw IndexError in the collator, a [n, units] one was
    transposed into the wrong axes, a lone source_locations column was silently ignored and a
    float intervention_id (0.5) was truncated to id 0."""
    im = rotated(MLP())
    before = state(im)
    with pytest.raises(err, match=match):
        trainer(im, _with(ds, **cols))
    assert state(im) == before
    if "intervention_id" not in cols:  # the evaluator's collator checks each batch the same way
        with pytest.raises(err, match=match.replace("train_dataset", "batch")):
            pv.evaluate(im, _with(ds, **cols), subspaces=SUBSPACES)


def test_sparse_intervention_ids_select_their_own_subspaces():
    """Ids {0, 2} built a dense table with a padding row (-1) for the missing id 1, which the
    intervention refused ('subspace id -1 is past subspace_partition'); an id of 10**12 made it
    try to allocate 16 TB."""
    data = pv.generate_counterfactual_dataset(pv.hierarchical_equality(), 64, {0: ["WX"], 2: ["YZ"]}, seed=0)
    pv.Trainer(rotated(MLP()), data, subspaces={0: [0], 2: [1]}, epochs=1, batch_size=32, show_progress=False).train()
    collator = pv.training.CounterfactualCollator({0: [0], 2: [1], 10**12: [0, 1]})
    got = collator.subspaces_for(torch.tensor([2, 0, 10**12, 2]))[0]
    assert got.tolist() == [[1, 1], [0, 0], [0, 1], [1, 1]]


@pytest.mark.parametrize("subspaces, match", [
    ({0: [0], 1: [-1], 2: [0, 1]}, r"subspaces\[1\]\[0\] must be a non-negative int, got -1"),
    ({0: [0], 1: [1.0], 2: [0, 1]}, r"subspaces\[1\] must be a non-empty list of non-negative ints, got 1.0"),
    ({0: [0], 1: [10**30], 2: [0, 1]}, r"subspaces\[1\]: subspace id 1000000000000000000000000000000 is past any"),
    ({0: [0], 1: [True], 2: [0, 1]}, r"subspaces\[1\] must be a non-empty list of non-negative ints, got True"),
    ({}, r"subspaces: expected \{intervention id: subspaces\}"),
])
def test_bad_subspace_tables_are_config_errors(ds, subspaces, match):
    """A float id failed with a raw TypeError, an id past int64 overflowed raw."""
    with pytest.raises(pv.ConfigError, match=match):
        pv.Trainer(rotated(MLP()), ds, subspaces=subspaces, show_progress=False)


@pytest.mark.parametrize("loc, match", [
    ([[0.5]], r"base_locations\[0\]\[0\] must be an int, got 0.5"),
    ([[True]], r"base_locations\[0\]\[0\] must be an int, got True"),
    ([[0], [0, 1]], r"base_locations: rows of different lengths \[1, 2\]"),
    ([[[0]]], r"base_locations\[0\]\[0\] must be an int, got \[0\]"),
    (torch.tensor([[0.0]]), r"base_locations: got a tensor of shape \(1, 1\), dtype torch.float32"),
])
def test_generated_datasets_take_integer_locations_only(loc, match):
    """Float and bool positions were cast to long (0.5 -> 0) without a word."""
    with pytest.raises(pv.ConfigError, match=match):
        pv.generate_counterfactual_dataset(pv.hierarchical_equality(), 4, IDS, base_locations=loc)
    with pytest.raises(pv.ConfigError, match="source_locations: give base_locations too"):
        pv.generate_counterfactual_dataset(pv.hierarchical_equality(), 4, IDS, source_locations=[[0]])


# -- checkpoints ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    trainer(rotated(MLP()), ds, checkpoint_dir=root).train()
    return root / "epoch-1"


def _copy(src, dst, state=None, doc=None, files=None):
    import json
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "checkpoint.json").read_text())
    if state:
        state(meta["state"])
    if doc:
        doc(meta)
    if files:
        files(dst, meta)
    (dst / "checkpoint.json").write_text(json.dumps(meta))
    return dst


def _rewrite(group, fn):
    """Rewrite a tensor file with fn(tensors) and drop its sha256 (a consistent but wrong folder)."""
    def edit(folder, meta):
        from safetensors.torch import load_file, save_file

        path = folder / f"checkpoint-{group}.safetensors"
        save_file(fn(load_file(path)), path)
        meta["tensors"][group].pop("sha256")
    return edit


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(d):
        for k in path[:-1]:
            d = d[k]
        if value is _DROP:
            d.pop(path[-1])
        else:
            d[path[-1]] = value
    return edit


_DROP = object()


@pytest.mark.parametrize("edit, match", [
    (dict(state=_set("trainer_state", "epoch", _DROP)), r"the loop state lacks \['epoch'\]"),
    (dict(state=_set("trainer_state", "epoch", "x")), r"the loop state has epoch='x'; accepted: a non-negative int"),
    (dict(state=_set("trainer_state", "global_step", -3)), r"global_step=-3; accepted: a non-negative int"),
    (dict(state=_set("trainer_state", "epoch", 1.5)), r"epoch=1.5"),
    (dict(state=_set("trainer_state", "history", 3)), r"history=3; accepted: a list"),
    (dict(state=_set("trainer_state", "best_eval_iia", "high")), r"best_eval_iia='high'; accepted: None or a finite number"),
    (dict(state=_set("trainer_state", [1])), r"the loop state is \[1\]; accepted: a dict"),
    (dict(state=_set("optimizer_param_groups", "x")), r"optimizer_param_groups is 'x'; accepted: a list of param groups"),
    (dict(state=_set("optimizer_param_groups", [])), r"the optimizer has \[1\] parameters per group, the checkpoint \[\]"),
    (dict(state=lambda s: s["optimizer_param_groups"][0].__setitem__("lr", "fast")),
     r"param group 0 has lr='fast'; AdamW takes a value like"),
    (dict(state=_set("optimizer_plain_state", {"99.step": 1})), r"optimizer state entry '99.step' names no parameter"),
    (dict(state=_set("optimizer_plain_state", {"step": 1})), r"optimizer state entry 'step' names no parameter"),
    (dict(state=_set("optimizer_class", "SGD")), r"trained with optimizer SGD, this run uses AdamW"),
    (dict(state=_set("scheduler", {"a": 1})), r"the saved schedule \{'a': 1\} lacks \['_get_lr_called_within_step'"),
    (dict(state=_set("scheduler", None)), r"the checkpoint has no schedule, but this run has one \(LambdaLR\)"),
    (dict(state=_set("scheduler", _DROP)), r"checkpoint.json's state lacks \['scheduler'\]"),
    (dict(doc=_set("tensors", "optimizer", "sha256", 5)), r"the sha256 of tensor group 'optimizer' is 5"),
    (dict(doc=_set("tensors", "optimizer", "aliases", ["a"])), r"the aliases of tensor group 'optimizer' are \['a'\]"),
    (dict(doc=_set("tensors", "optimizer", "file", "../epoch-1/checkpoint-optimizer.safetensors")),
     r"names the file '../epoch-1/checkpoint-optimizer.safetensors'; accepted: a file name inside the checkpoint folder"),
    (dict(files=_rewrite("optimizer", lambda t: {k: v[:1] if v.dim() else v for k, v in t.items()})),
     r"optimizer state '0.exp_avg' has shape \[1, 16\] but its parameter has shape \[16, 16\]"),
    (dict(files=_rewrite("interventions", lambda t: {k: (v * 100).long() for k, v in t.items()})),
     r"has dtype torch.int64; accepted: torch.float32, the dtype it is trained in \(nothing is cast on load\)"),
    (dict(files=_rewrite("interventions", lambda t: {k: v[:8] for k, v in t.items()})),
     r"size mismatch for 0.rotate_layer.parametrizations.weight.original: the checkpoint has shape \[8, 16\]"),
])
def test_a_damaged_checkpoint_is_a_load_error_and_changes_nothing(ds, checkpoint, tmp_path, edit, match):
    """A missing 'epoch' was a raw KeyError, a list state a TypeError, a wrong sha256 or aliases
    type a TypeError/AttributeError; lr='fast', a wrong-shaped optimizer tensor, integer weights
    and another optimizer's settings were loaded (failing later, or cast silently); and a
    failure after the weights were loaded left them loaded."""
    folder = _copy(checkpoint, tmp_path / "damaged", **edit)
    im = rotated(MLP())
    tr = trainer(im, ds)
    weights = {k: v.clone() for k, v in im.interventions.state_dict().items()}
    opt, sched, loop_state = (repr(tr.optimizer.state_dict()), repr(tr.scheduler.state_dict()), repr(tr.state))
    with pytest.raises(pv.LoadError, match=match):
        tr.train(resume_from_checkpoint=folder)
    assert all(torch.equal(v, im.interventions.state_dict()[k]) for k, v in weights.items())
    assert (repr(tr.optimizer.state_dict()), repr(tr.scheduler.state_dict()), repr(tr.state)) == (opt, sched, loop_state)


def test_a_checkpoint_resumes_only_into_the_optimizer_it_was_trained_with(ds, checkpoint):
    """SGD took AdamW's param groups (betas, eps ...) and failed at its first step with KeyError."""
    with pytest.raises(pv.LoadError, match="trained with optimizer AdamW, this run uses SGD"):
        trainer(rotated(MLP()), ds, optimizer=torch.optim.SGD).load_checkpoint(checkpoint)
    tr = trainer(rotated(MLP()), ds)
    tr.load_checkpoint(checkpoint)  # the same setup resumes
    assert tr.state["epoch"] == 1
