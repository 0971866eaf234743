"""Causal models, counterfactual data, the trainer and the evaluator."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_gpt2
from tiny_models import MLP

import pyvene_like as pv
from pyvene_like.training import CounterfactualCollator

IDS = {0: ["WX"], 1: ["YZ"], 2: ["WX", "YZ"]}
SUBSPACES = {0: [0], 1: [1], 2: [0, 1]}




@pytest.fixture
def cm():
    return pv.hierarchical_equality()


def rotated(model, **kw):
    rep = pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space",
                                  subspace_partition=[[0, 8], [8, 16]], **kw)
    return pv.IntervenableModel(rep, model)


# -- causal model ---------------------------------------------------------------------------------
def test_forward_matches_direct_computation(cm):
    inp = cm.sample_inputs(500, seed=3)
    out = cm.run_forward(inp)
    wx = (inp["W"] == inp["X"]).all(-1)
    yz = (inp["Y"] == inp["Z"]).all(-1)
    assert torch.equal(out["WX"], wx) and torch.equal(out["YZ"], yz)
    assert torch.equal(out["O"], wx == yz)
    # The sampler balances both equalities.
    assert 0.4 < wx.float().mean() < 0.6 and 0.4 < yz.float().mean() < 0.6


def test_interchange_matches_direct_computation(cm):
    base = cm.sample_inputs(300, seed=1)
    src = cm.sample_inputs(300, seed=2)
    got = cm.run_interchange(base, {"WX": src})
    want = (src["W"] == src["X"]).all(-1) == (base["Y"] == base["Z"]).all(-1)
    assert torch.equal(got["O"], want)


def test_values_lists_are_sampled_uniformly():
    m = pv.CausalModel(["A", "B", "C"], parents={"C": ["A", "B"]},
                       functions={"C": lambda a, b: a + b}, values={"A": [0, 1], "B": [10, 20, 30]})
    out = m.run_forward(m.sample_inputs(3000, seed=0))
    assert set(out["A"].tolist()) == {0, 1} and set(out["B"].tolist()) == {10, 20, 30}
    assert torch.equal(out["C"], out["A"] + out["B"])
    assert m.outputs == ["C"] and m.inputs == ["A", "B"]


def test_causal_model_errors():
    with pytest.raises(pv.ConfigError, match="cycle through"):
        pv.CausalModel(["A", "B"], parents={"A": ["B"], "B": ["A"]}, functions={"A": abs, "B": abs})
    with pytest.raises(pv.ConfigError, match=r"parents\['B'\]: \['Q'\] are not among variables"):
        pv.CausalModel(["A", "B"], parents={"B": ["Q"]}, functions={"B": abs}, values={"A": [0]})
    with pytest.raises(pv.ConfigError, match=r"functions\['B'\]: variable 'B' has parents \['A'\]"):
        pv.CausalModel(["A", "B"], parents={"B": ["A"]}, values={"A": [0]})
    with pytest.raises(pv.ConfigError, match=r"values\['A'\]: input variable 'A' needs possible values"):
        pv.CausalModel(["A", "B"], parents={"B": ["A"]}, functions={"B": abs})
    m = pv.CausalModel(["A", "B"], parents={"B": ["A"]}, functions={"B": lambda a: a[:1]}, values={"A": [1, 2]})
    with pytest.raises(pv.ShapeError, match=r"functions\['B'\]: expected a batch of 4 values"):
        m.run_forward(m.sample_inputs(4))
    with pytest.raises(pv.ConfigError, match=r"inputs: missing input variable\(s\) \['A'\]"):
        m.run_forward({})


# -- counterfactual data ----------------------------------------------------------------------------
def _loop_reference(cm, ds):
    """Counterfactual labels recomputed one example at a time from the encoded inputs."""
    out = []
    for row in ds:
        b = row["input_ids"].reshape(4, 4)
        s = row["source_input_ids"][0].reshape(4, 4)
        wx = bool((b[0] == b[1]).all())
        yz = bool((b[2] == b[3]).all())
        vars_ = IDS[int(row["intervention_id"])]
        if "WX" in vars_:
            wx = bool((s[0] == s[1]).all())
        if "YZ" in vars_:
            yz = bool((s[2] == s[3]).all())
        out.append(int(wx == yz))
    return torch.tensor(out)


def test_counterfactual_dataset_matches_loop(cm):
    ds = pv.generate_counterfactual_dataset(cm, 400, IDS, seed=5)
    assert ds.column_names == ["input_ids", "source_input_ids", "labels", "base_labels", "intervention_id"]
    assert torch.equal(ds[:]["labels"], _loop_reference(cm, ds))
    assert set(ds[:]["intervention_id"].tolist()) == {0, 1, 2}
    assert ds[:]["source_input_ids"].shape == (400, 1, 16)
    again = pv.generate_counterfactual_dataset(cm, 400, IDS, seed=5)
    assert torch.equal(again[:]["input_ids"], ds[:]["input_ids"])  # seeded


def test_distinct_sources_and_weights(cm):
    ds = pv.generate_counterfactual_dataset(cm, 300, IDS, seed=1, distinct_sources=True, id_weights=[0, 0, 1])
    cols = ds[:]
    assert cols["source_input_ids"].shape == (300, 2, 16) and set(cols["intervention_id"].tolist()) == {2}
    s0 = cols["source_input_ids"][:, 0].reshape(-1, 4, 4)
    s1 = cols["source_input_ids"][:, 1].reshape(-1, 4, 4)
    want = (s0[:, 0] == s0[:, 1]).all(-1) == (s1[:, 2] == s1[:, 3]).all(-1)
    assert torch.equal(cols["labels"], want.long())


def test_counterfactual_dataset_errors(cm):
    with pytest.raises(pv.ConfigError, match=r"intervention_ids\[0\]: 'Q' is not a variable"):
        pv.generate_counterfactual_dataset(cm, 10, {0: ["Q"]})
    with pytest.raises(pv.ConfigError, match=r"intervention_ids\[0\]: 'O' is an output"):
        pv.generate_counterfactual_dataset(cm, 10, {0: ["O"]})
    with pytest.raises(pv.ConfigError, match=r"id_weights: expected 3 non-negative weights"):
        pv.generate_counterfactual_dataset(cm, 10, IDS, id_weights=[1, 1])
    with pytest.raises(pv.ConfigError, match="size: expected a positive int, got 0"):
        pv.generate_counterfactual_dataset(cm, 0, IDS)


def test_collator_batches_for_the_model(cm):
    ds = pv.generate_counterfactual_dataset(cm, 8, IDS, seed=0, base_locations=[[0]], source_locations=[[0]])
    col = CounterfactualCollator(SUBSPACES)
    batch = col([ds[i] for i in range(8)])  # rows, as a DataLoader hands them
    ids = batch["intervention_id"].tolist()
    padded = {0: [0, 0], 1: [1, 1], 2: [0, 1]}
    assert batch["subspaces"][0].tolist() == [padded[i] for i in ids]
    assert batch["unit_locations"] == {"sources->base": ([[[0]] * 8], [[[0]] * 8])}
    assert batch["sources"][0].shape == (8, 16) and batch["base"].shape == (8, 16)
    keyed = CounterfactualCollator(SUBSPACES, input_key="inputs_embeds")(ds[:])
    assert set(keyed["base"]) == {"inputs_embeds"}
    with pytest.raises(pv.ConfigError, match=r"the data has id\(s\) \[2\] with no entry in subspaces"):
        CounterfactualCollator({0: [0], 1: [1]})(ds[:])
    with pytest.raises(pv.ConfigError, match="missing column 'source_input_ids'"):
        col({"input_ids": torch.zeros(2, 16), "labels": torch.zeros(2)})


# -- source caching ---------------------------------------------------------------------------------
def test_collected_sources_reproduce_the_source_pass(gpt2):
    cfg = [pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"),
           pv.RepresentationConfig(2, "mlp_output", intervention_type="vanilla")]
    im = pv.IntervenableModel(cfg, gpt2)
    g = torch.Generator().manual_seed(0)
    base = {"input_ids": torch.randint(0, 100, (3, 8), generator=g)}
    src = {"input_ids": torch.randint(0, 100, (3, 8), generator=g)}
    locs = {"sources->base": ([[[1]] * 3, [[2, 5]] * 3], [[[3]] * 3, [[4, 6]] * 3])}
    reps = im.collect_source_representations([src], locs)
    assert [r.shape for r in reps] == [(3, 1, 64), (3, 2, 64)]
    with_src = im(base, [src], locs)[1].logits
    with_reps = im(base, source_representations=reps, unit_locations=locs)[1].logits
    assert torch.equal(with_src, with_reps)
    serial = pv.IntervenableModel(pv.IntervenableConfig(cfg, mode="serial"), gpt2)
    with pytest.raises(pv.ConfigError, match="mode='serial' feeds each intervention"):
        serial.collect_source_representations([src, src])


# -- the trainer --------------------------------------------------------------------------------------
def _hand_step(model, iv, cols, lr):
    """One SGD step of a rotated-space interchange at layer 0, written with plain hooks."""
    R_mod = iv.rotate_layer
    opt = torch.optim.SGD(iv.parameters(), lr=lr)
    table = torch.zeros(3, 16, dtype=torch.bool)
    table[0, :8] = table[1, 8:] = True
    table[2] = True
    mask = table[cols["intervention_id"]]
    store = {}
    h = model.layers[0].register_forward_hook(lambda m, a, o: store.__setitem__("src", o.detach()))
    model(cols["source_input_ids"][:, 0])
    h.remove()

    def write(m, a, o):
        R = R_mod.weight
        diff = ((store["src"] - o) @ R) * mask
        return o + diff @ R.T

    h = model.layers[0].register_forward_hook(write)
    try:
        loss = F.cross_entropy(model(cols["input_ids"]), cols["labels"])
    finally:
        h.remove()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("cache", [True, False])
def test_one_step_equals_hand_written_hooks(cm, cache):
    model = MLP()
    ds = pv.generate_counterfactual_dataset(cm, 64, IDS, seed=0)
    im = rotated(model)
    ref_iv = copy.deepcopy(im.interventions[0])
    for p in model.parameters():
        p.requires_grad_(False)
    ref_loss = _hand_step(model, ref_iv, ds[:], lr=0.5)
    tr = pv.Trainer(im, ds, subspaces=SUBSPACES, batch_size=64, epochs=1, lr=0.5, optimizer=torch.optim.SGD,
                    scheduler="constant", cache_sources=cache, show_progress=False)
    res = tr.train()
    assert res.sources_cached is cache and res.global_step == 1
    assert res.history[0]["train_loss"] == pytest.approx(ref_loss, abs=1e-6)
    torch.testing.assert_close(im.interventions[0].rotate_layer.weight, ref_iv.rotate_layer.weight,
                               atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.layers[0]._forward_hooks  # no leftover hook


def test_gradient_accumulation_equals_one_big_batch(cm):
    ds = pv.generate_counterfactual_dataset(cm, 64, IDS, seed=0)
    weights = []
    for bs, acc in ((64, 1), (32, 2)):
        torch.manual_seed(0)  # the same initial rotation
        im = rotated(MLP())
        pv.Trainer(im, ds, subspaces=SUBSPACES, batch_size=bs, gradient_accumulation_steps=acc, lr=0.5,
                   optimizer=torch.optim.SGD, scheduler="constant", show_progress=False).train()
        weights.append(im.interventions[0].rotate_layer.weight.detach())
    torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=1e-5)


def test_das_learns_and_evaluate_counts_per_id(cm):
    torch.manual_seed(0)
    model = MLP()
    ds = pv.generate_counterfactual_dataset(cm, 2000, IDS, seed=0)
    ev = pv.generate_counterfactual_dataset(cm, 600, IDS, seed=1)
    im = rotated(model)
    tr = pv.Trainer(im, ds, ev, subspaces=SUBSPACES, epochs=3, batch_size=64, lr=5e-3,
                    id_names={0: "WX", 1: "YZ", 2: "both"}, show_progress=False)
    before = tr.evaluate()
    res = tr.train()
    after = tr.evaluate()
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert after.iia > before.iia
    # Per-id IIA recomputed by hand from the model's predictions.
    cols = ev[:]
    with torch.no_grad():
        subs = [[SUBSPACES[int(i)] for i in cols["intervention_id"]]]
        _, out = im(cols["input_ids"], [cols["source_input_ids"][:, 0]], {"sources->base": 0}, subspaces=subs)
        ok = (out.argmax(-1) == cols["labels"]).float()
        fact = (model(cols["input_ids"]).argmax(-1) == cols["base_labels"]).float().mean().item()
    for k, name in ((0, "WX"), (1, "YZ"), (2, "both")):
        sel = cols["intervention_id"] == k
        assert after.iia_per_id[name] == pytest.approx(ok[sel].mean().item(), abs=1e-6)
        assert after.n_per_id[name] == int(sel.sum())
    assert after.iia == pytest.approx(ok.mean().item(), abs=1e-6)
    assert after.factual_accuracy == pytest.approx(fact, abs=1e-6)


def test_early_stopping_and_best_restored(cm):
    ds = pv.generate_counterfactual_dataset(cm, 128, IDS, seed=0)
    im = rotated(MLP())
    w0 = im.interventions[0].rotate_layer.weight.detach().clone()
    tr = pv.Trainer(im, ds, ds, subspaces=SUBSPACES, epochs=10, batch_size=64, lr=0.0,
                    early_stopping_patience=2, show_progress=False)
    res = tr.train()
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1
    torch.testing.assert_close(im.interventions[0].rotate_layer.weight, w0)


def test_checkpoint_resume_repeats_the_run(cm, tmp_path):
    ds = pv.generate_counterfactual_dataset(cm, 256, IDS, seed=0)
    kw = dict(subspaces=SUBSPACES, epochs=2, batch_size=64, lr=1e-2, show_progress=False)
    full = rotated(MLP())
    pv.Trainer(full, ds, checkpoint_dir=tmp_path, **kw).train()
    # checkpoint files are named apart from save_pretrained's (interventions.safetensors)
    assert (tmp_path / "epoch-1" / "checkpoint-interventions.safetensors").is_file()
    assert not (tmp_path / "epoch-1" / "interventions.safetensors").exists()
    torch.manual_seed(123)
    resumed = rotated(MLP())  # another initial rotation: the checkpoint must overwrite it
    res = pv.Trainer(resumed, ds, **kw).train(resume_from_checkpoint=tmp_path / "epoch-1")
    assert res.global_step == 8 and len(res.history) == 2
    torch.testing.assert_close(resumed.interventions[0].rotate_layer.weight,
                               full.interventions[0].rotate_layer.weight, atol=1e-6, rtol=1e-5)
    (tmp_path / "epoch-2" / "checkpoint-optimizer.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(pv.LoadError, match="cannot read"):
        pv.Trainer(rotated(MLP()), ds, **kw).train(resume_from_checkpoint=tmp_path / "epoch-2")
    with pytest.raises(pv.LoadError, match=r"lacks \['checkpoint.json'"):
        pv.Trainer(rotated(MLP()), ds, **kw).train(resume_from_checkpoint=tmp_path)


def test_temperature_schedule_and_custom_loss_and_metric(cm):
    ds = pv.generate_counterfactual_dataset(cm, 128, IDS, seed=0)
    im = pv.IntervenableModel(
        pv.RepresentationConfig(0, "block_output", intervention_type="boundless_rotated_space"), MLP())
    calls = []

    def loss_fn(logits, labels):
        calls.append(len(labels))
        return F.cross_entropy(logits, labels)

    def metric_fn(logits, labels):
        return {"accuracy": (logits.argmax(-1) == labels).float().mean().item(), "n": len(labels)}

    tr = pv.Trainer(im, ds, ds, epochs=2, batch_size=64, lr=1e-2, temperature_schedule=(50.0, 0.1),
                    loss_fn=loss_fn, metric_fn=metric_fn, load_best_at_end=False, show_progress=False)
    res = tr.train()
    assert calls == [64] * 4
    assert im.interventions[0].get_temperature().item() == pytest.approx(0.1)
    ev = tr.evaluate()
    assert ev.metrics["n"] == 128 and ev.iia == ev.metrics["accuracy"]
    assert "eval_iia" in res.history[-1]


def test_bf16_mixed_precision_and_model_training(cm):
    ds = pv.generate_counterfactual_dataset(cm, 128, IDS, seed=0)
    im = rotated(MLP())
    res = pv.Trainer(im, ds, subspaces=SUBSPACES, batch_size=64, mixed_precision="bf16",
                     show_progress=False).train()
    assert torch.isfinite(torch.tensor(res.history[0]["train_loss"]))
    model = MLP()
    before = model.head.weight.detach().clone()
    im = rotated(model)
    res = pv.Trainer(im, ds, subspaces=SUBSPACES, batch_size=64, lr=1e-2, train_model=True,
                     show_progress=False).train()
    assert not res.sources_cached and not torch.equal(model.head.weight, before)


# -- bad input ----------------------------------------------------------------------------------------
def test_trainer_errors(cm):
    ds = pv.generate_counterfactual_dataset(cm, 32, IDS, seed=0)
    im = rotated(MLP())
    with pytest.raises(pv.ConfigError, match=r"train_dataset: missing column 'source_input_ids'"):
        pv.Trainer(im, ds.remove_columns("source_input_ids"), subspaces=SUBSPACES)
    with pytest.raises(pv.ConfigError, match=r"missing column 'intervention_id'.*per intervention id"):
        pv.Trainer(im, ds.remove_columns("intervention_id"), subspaces=SUBSPACES)
    bad_labels = ds.remove_columns("labels").add_column("labels", [[0.0, 1.0]] * 32)
    with pytest.raises(pv.ShapeError, match=r"column 'labels' has shape \(32, 2\)"):
        pv.Trainer(im, bad_labels, subspaces=SUBSPACES)
    with pytest.raises(pv.LocationError, match=r"subspace id 2 is past subspace_partition \[\[0, 8\], \[8, 16\]\]"):
        pv.Trainer(im, ds, subspaces={0: [0], 1: [2], 2: [0, 1]})
    no_part = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space"), MLP())
    with pytest.raises(pv.LocationError, match=r"dimension 16 is past the rotation width 16"):
        pv.Trainer(no_part, ds, subspaces={0: [0], 1: [16], 2: [3]})
    low_rank = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="low_rank_rotated_space",
                                                            low_rank_dimension=4), MLP())
    with pytest.raises(pv.LocationError, match=r"dimension 5 is past the rotation width 4 of LowRankRotatedSpaceIntervention"):
        pv.Trainer(low_rank, ds, subspaces={0: [0], 1: [5], 2: [1]})  # before any step
    vanilla = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="vanilla"), MLP())
    with pytest.raises(pv.ConfigError, match=r"nothing to train: the interventions \(VanillaIntervention\)"):
        pv.Trainer(vanilla, ds)
    with pytest.raises(pv.ConfigError, match="cache_sources=True: source activations can only be cached"):
        pv.Trainer(rotated(MLP()), ds, subspaces=SUBSPACES, train_model=True, cache_sources=True)
    with pytest.raises(pv.ConfigError, match="early_stopping_patience: needs an eval_dataset"):
        pv.Trainer(im, ds, subspaces=SUBSPACES, early_stopping_patience=2)
    with pytest.raises(pv.ConfigError, match="batch_size: expected a positive int, got 0"):
        pv.Trainer(im, ds, subspaces=SUBSPACES, batch_size=0)
    with pytest.raises(pv.ConfigError, match=r"the data has id\(s\) \[2\]"):
        pv.Trainer(im, ds, subspaces={0: [0], 1: [1]})
    with pytest.raises(pv.ShapeError, match=r"labels: expected class ids of shape \[batch\]"):
        pv.Trainer(im, ds, subspaces=SUBSPACES, logits_fn=lambda out: out[:, :1].T, show_progress=False).train()


def test_checkpoint_of_linked_interventions(cm, tmp_path):
    """Two representations sharing one rotation (intervention_link_key) save it once."""
    ds = pv.generate_counterfactual_dataset(cm, 64, IDS, seed=0)
    reps = [pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space",
                                    subspace_partition=[[0, 8], [8, 16]], intervention_link_key=0,
                                    group_key=g) for g in (0, 1)]
    im = pv.IntervenableModel(reps, MLP())
    assert im.interventions[0] is im.interventions[1]
    tr = pv.Trainer(im, ds, subspaces={k: [v, v] for k, v in SUBSPACES.items()}, batch_size=32,
                    checkpoint_dir=tmp_path, show_progress=False)
    tr.train()
    torch.manual_seed(5)
    other = pv.IntervenableModel(reps, MLP())
    pv.Trainer(other, ds, subspaces={k: [v, v] for k, v in SUBSPACES.items()}, batch_size=32,
               epochs=1, show_progress=False).load_checkpoint(tmp_path / "epoch-1")
    assert torch.equal(other.interventions[0].rotate_layer.weight, im.interventions[0].rotate_layer.weight)


def test_subspace_id_tensors_equal_lists():
    """The collator's [batch, k] id tensors select exactly what per-example lists select."""
    im = rotated(MLP())
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    rows = [[0, 0], [1, 1], [0, 1], [0, 0], [1, 1], [0, 1]]
    with torch.no_grad():
        want = im(x, [s], {"sources->base": 0}, subspaces=[rows])[1]
        got = im(x, [s], {"sources->base": 0}, subspaces=[torch.tensor(rows)])[1]
        same = im(x, [s], {"sources->base": 0}, subspaces=[torch.tensor([[1]] * 6)])[1]
        same_list = im(x, [s], {"sources->base": 0}, subspaces=[[1]])[1]
    assert torch.equal(got, want) and torch.equal(same, same_list)
    with pytest.raises(pv.LocationError, match=r"subspace id 2 is past subspace_partition"):
        im(x, [s], {"sources->base": 0}, subspaces=[torch.tensor([[2]] * 6)])


def test_trainer_leaves_a_dispatched_model_in_place():
    """An offloaded / device_map model is not moved by accelerate and trains like the in-memory one."""
    from accelerate import cpu_offload

    g = torch.Generator().manual_seed(0)
    n = 16
    cols = {"input_ids": torch.randint(0, 100, (n, 6), generator=g),
            "source_input_ids": torch.randint(0, 100, (n, 1, 6), generator=g),
            "labels": torch.randint(0, 5, (n,), generator=g)}
    weights = []
    for offload in (False, True):
        model = make_gpt2()
        if offload:
            cpu_offload(model, execution_device=torch.device("cpu"))
            model.hf_device_map = {"": "cpu"}
        torch.manual_seed(0)
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"), model)
        pv.Trainer(im, cols, input_key="input_ids", unit_locations=5, batch_size=8, lr=1e-2,
                   show_progress=False).train()
        if offload:
            assert next(model.parameters()).device.type == "meta"
        weights.append(im.interventions[0].rotate_layer.weight.detach())
    torch.testing.assert_close(weights[0], weights[1])
