"""pyvene's public helpers and toy models (pyvene_like.compat), checked against direct math.

Every check recomputes the expected value by hand (matrix products, softmax, a GRU
recurrence compared with torch's own ``nn.GRUCell``), never by calling the code under test
twice. No network: random models come from ``config=``, loading by name uses a local
directory written by ``save_pretrained``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import train_bpe_tokenizer
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, GPTNeoConfig, LlamaConfig

import pyvene_like as pv
from pyvene_like import compat
from pyvene_like.compat import (
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    MLPConfig,
    MLPForClassification,
)
from pyvene_like.errors import ConfigError, LoadError, PyveneLikeWarning

CORPUS = ["The capital of Spain is Madrid", "The capital of Italy is Rome", "hello world\nagain"] * 20


def tiny_gpt2_config(**kw):
    base = dict(n_embd=24, n_layer=2, n_head=4, n_positions=32, vocab_size=400,
                attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    base.update(kw)
    return GPT2Config(**base)


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(CORPUS)


class ListTokenizer:
    """decode(id) -> a fixed string, to test formatting without a real vocabulary."""

    def __init__(self, words):
        self.words = words

    def decode(self, tok):
        return self.words[int(tok)]


# ------------------------------------------------------------------------ read-out helpers


@pytest.mark.parametrize("cls", [GPT2Model, GPT2LMHeadModel])
def test_embed_to_distrib_is_softmax_of_hidden_times_embedding(cls):
    torch.manual_seed(0)
    model = cls(tiny_gpt2_config()).eval()
    wte = model.get_input_embeddings().weight
    hidden = torch.randn(2, 3, 24)
    scores = hidden @ wte.detach().T
    torch.testing.assert_close(compat.embed_to_distrib(model, hidden, logits=True), scores)
    torch.testing.assert_close(compat.embed_to_distrib(model, hidden), torch.softmax(scores, dim=2))
    torch.testing.assert_close(compat.embed_to_distrib(model, hidden, log=True), torch.log_softmax(scores, dim=2))
    out = compat.embed_to_distrib(model, hidden)
    assert out.shape == (2, 3, 400) and not out.requires_grad
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3))


def test_embed_to_distrib_names_the_model_without_embeddings():
    with pytest.raises(ConfigError, match="Linear"):
        compat.embed_to_distrib(nn.Linear(2, 2), torch.zeros(1, 1, 2))


def test_format_token_marks_spaces_and_newlines():
    tok = ListTokenizer([" Madrid", "a\nb", "plain"])
    assert compat.format_token(tok, 0) == "_Madrid"
    assert compat.format_token(tok, 1) == "a\\nb"
    assert compat.format_token(tok, torch.tensor(2)) == "plain"


def test_format_token_on_a_bpe_tokenizer(bpe):
    ids = bpe(" Madrid")["input_ids"]
    assert "".join(compat.format_token(bpe, i) for i in ids) == "_Madrid"


def test_top_vals_orders_prints_and_returns(capsys):
    tok = ListTokenizer(["zero", " one", "two", "three\n", "four"])
    res = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    got = compat.top_vals(tok, res, n=3, return_results=True)
    assert [t for t, _ in got] == ["_one", "three\\n", "four"]
    assert [v for _, v in got] == pytest.approx([0.4, 0.3, 0.15])
    assert capsys.readouterr().out == ""
    assert compat.top_vals(tok, res, n=2) is None
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{'_one':<20} {res[1].item()}", f"{'three' + chr(92) + 'n':<20} {res[3].item()}"]


def test_get_loc_nests_head_and_position():
    assert compat.GET_LOC((3, 5)) == [[[[3]], [[5]]]]
    assert compat.GET_LOC((3, 5), batch_size=2) == [[[[3], [3]], [[5], [5]]]]
    with pytest.raises(ConfigError, match="'h.pos'"):
        compat.GET_LOC((3, 5), unit="pos")


def test_set_seed_and_count_parameters():
    compat.set_seed(7)
    a = torch.rand(3)
    compat.set_seed(7)
    assert torch.equal(a, torch.rand(3))
    lin = nn.Linear(3, 4)
    lin.bias.requires_grad_(False)
    assert compat.count_parameters(lin) == 12


# ------------------------------------------------------------------------------ MLP model


def test_mlp_config_fields_and_standard_names():
    cfg = MLPConfig()
    assert (cfg.h_dim, cfg.n_layer, cfg.num_classes, cfg.pdrop, cfg.activation_function) == (512, 2, 2, 0.3, "gelu")
    assert (cfg.include_emb, cfg.include_bias, cfg.squeeze_output) == (False, True, True)
    assert cfg.problem_type == "single_label_classification" and cfg.model_type == "mlp"
    small = MLPConfig(h_dim=3, n_layer=1)
    assert (small.hidden_size, small.num_hidden_layers) == (3, 1)


@pytest.mark.parametrize("bias", [False, True])
def test_mlp_classifier_forward_matches_hand_math(bias):
    torch.manual_seed(0)
    cfg = MLPConfig(h_dim=3, n_layer=2, pdrop=0.0, num_classes=5, include_bias=bias, squeeze_output=False)
    mlp = MLPForClassification(cfg).eval()
    x = torch.randn(4, 1, 3)
    h = x
    for block in mlp.mlp.h:
        h = torch.nn.functional.gelu(h @ block.ff1.weight.T + (block.ff1.bias if bias else 0))
    want = h @ mlp.score.weight.T + (mlp.score.bias if bias else 0)
    out = mlp(inputs_embeds=x)
    assert isinstance(out, tuple) and len(out) == 1
    torch.testing.assert_close(out[0], want)
    assert out[0].shape == (4, 1, 5)
    # the attribute paths pyvene code reaches into
    assert mlp.mlp.h[0].ff1.weight.shape == (3, 3) and mlp.score.weight.shape == (5, 3)
    assert isinstance(mlp.mlp.h[0].act, nn.Module)


def test_mlp_squeeze_loss_hidden_states_and_return_dict():
    torch.manual_seed(1)
    mlp = MLPForClassification(MLPConfig(h_dim=4, n_layer=2, pdrop=0.0, num_classes=3)).eval()
    x = torch.randn(5, 1, 4)
    labels = torch.tensor([0, 1, 2, 1, 0])
    loss, logits, hidden = mlp(inputs_embeds=x, labels=labels, output_hidden_states=True)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    assert len(hidden) == 3 and torch.equal(hidden[0], x)
    torch.testing.assert_close(mlp.mlp.h[1](hidden[1]), hidden[2])
    out = mlp(inputs_embeds=x, return_dict=True)
    torch.testing.assert_close(out.logits, logits)


def test_mlp_with_embeddings_adds_positions():
    torch.manual_seed(2)
    cfg = MLPConfig(include_emb=True, vocab_size=10, max_position_embeddings=4, h_dim=6, n_layer=1, pdrop=0.0)
    base = MLPForClassification(cfg).mlp.eval()
    ids, pos = torch.tensor([[1, 2]]), torch.tensor([[0, 1]])
    x = base.wte(ids) + base.wpe(pos)
    want = base.h[0].act(x @ base.h[0].ff1.weight.T + base.h[0].ff1.bias)
    torch.testing.assert_close(base(input_ids=ids, position_ids=pos)[0], want)


# ------------------------------------------------------------------------------ GRU models


def torch_gru_reference(model: GRUModel, x: torch.Tensor) -> torch.Tensor:
    """The same recurrence run by torch's nn.GRUCell (gate order reset | update | new)."""
    cells = []
    for cell in model.cells:
        ref = nn.GRUCell(model.h_dim, model.h_dim)
        with torch.no_grad():
            ref.weight_ih.copy_(cell.x2h.weight)
            ref.weight_hh.copy_(cell.h2h.weight)
            ref.bias_ih.copy_(cell.x2h.bias)
            ref.bias_hh.copy_(cell.h2h.bias)
        cells.append(ref)
    states = [x.new_zeros(x.shape[0], model.h_dim) for _ in cells]
    top = []
    for t in range(x.shape[1]):
        below = x[:, t]
        for i, ref in enumerate(cells):
            states[i] = ref(below, states[i])
            below = states[i]
        top.append(below)
    return torch.stack(top, dim=1)


def test_gru_config_fields():
    cfg = GRUConfig()
    assert (cfg.h_dim, cfg.n_layer, cfg.n_labels, cfg.pdrop, cfg.initializer_range) == (512, 2, 2, 0.3, 0.02)
    assert cfg.model_type == "gru" and cfg.include_bias and not cfg.include_emb
    assert (GRUConfig(h_dim=8, n_layer=3).hidden_size, GRUConfig(n_layer=3).num_hidden_layers) == (8, 3)


def test_gru_model_matches_torch_gru_cells():
    torch.manual_seed(0)
    gru = GRUModel(GRUConfig(h_dim=6, n_layer=2))
    x = torch.randn(3, 5, 6)
    steps, last = gru(inputs_embeds=x)
    want = torch_gru_reference(gru, x)
    torch.testing.assert_close(steps, want)
    torch.testing.assert_close(last, want[:, -1])
    bound = 1 / 6**0.5
    assert all(p.abs().max() <= bound for p in gru.parameters())


def test_gru_position_embeddings_leave_the_input_alone():
    torch.manual_seed(0)
    gru = GRUModel(GRUConfig(h_dim=4, n_layer=1, include_emb=True, vocab_size=9, max_position_embeddings=5))
    x = torch.randn(1, 3, 4)
    before = x.clone()
    pos = torch.tensor([[0, 1, 2]])
    steps, _ = gru(inputs_embeds=x, position_ids=pos)
    assert torch.equal(x, before)
    torch.testing.assert_close(steps, torch_gru_reference(gru, x + gru.wpe(pos)))


def test_gru_classifier_pools_the_last_unmasked_step():
    torch.manual_seed(0)
    clf = GRUForClassification(GRUConfig(h_dim=5, n_layer=1, n_labels=3))
    x = torch.randn(2, 4, 5)
    steps = torch_gru_reference(clf.gru, x)
    logits, last = clf(inputs_embeds=x)
    torch.testing.assert_close(logits, steps[:, -1] @ clf.score.weight.T)
    torch.testing.assert_close(last, steps[:, -1])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    masked = clf(inputs_embeds=x, attention_mask=mask)[0]
    torch.testing.assert_close(masked, torch.stack([steps[0, 1], steps[1, 3]]) @ clf.score.weight.T)
    labels = torch.tensor([2, 0])
    loss = clf(inputs_embeds=x, labels=labels)[0]
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    assert clf.score.bias is None


def test_gru_lm_head_logits_and_shifted_loss():
    torch.manual_seed(0)
    lm = GRULMHeadModel(GRUConfig(h_dim=4, n_layer=2, include_emb=True, vocab_size=11))
    ids = torch.tensor([[1, 5, 2, 7]])
    steps = torch_gru_reference(lm.gru, lm.gru.wte(ids))
    loss, logits, _ = lm(input_ids=ids, labels=ids)
    torch.testing.assert_close(logits, steps @ lm.lm_head.weight.T)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]))
    assert lm.get_output_embeddings() is lm.lm_head


# ------------------------------------------------------------------------------ factories


def test_toy_factories_build_random_models():
    cfg = MLPConfig(h_dim=3, n_layer=1, pdrop=0.0, num_classes=5)
    got_cfg, tok, mlp = compat.create_mlp_classifier(cfg)
    assert got_cfg is cfg and tok is None and isinstance(mlp, MLPForClassification)
    gcfg = GRUConfig(h_dim=8)
    for factory, cls in [(compat.create_gru, GRUModel), (compat.create_gru_lm, GRULMHeadModel),
                         (compat.create_gru_classifier, GRUForClassification)]:
        c, t, m = factory(gcfg)
        assert c is gcfg and t is None and type(m) is cls
    with pytest.raises(ConfigError, match="MLPConfig"):
        compat.create_mlp_classifier(gcfg)


@pytest.mark.parametrize(
    "factory, config, cls_name, n_layers",
    [
        (compat.create_gpt2, tiny_gpt2_config(), "GPT2Model", 2),
        (compat.create_gpt2_lm, tiny_gpt2_config(), "GPT2LMHeadModel", 2),
        (compat.create_gpt_neo, GPTNeoConfig(hidden_size=16, num_layers=2, num_heads=2, vocab_size=50,
                                             attention_types=[[["global", "local"], 1]], max_position_embeddings=32),
         "GPTNeoForCausalLM", 2),
        (compat.create_llama, LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                          num_attention_heads=4, vocab_size=50), "LlamaForCausalLM", 3),
    ],
)
def test_hf_factories_with_config_are_random_and_offline(factory, config, cls_name, n_layers, tmp_path):
    with pytest.warns(PyveneLikeWarning, match="tokenizer None"):
        got_cfg, tok, model = factory(name=str(tmp_path / "absent"), config=config)
    assert got_cfg is config and tok is None
    assert type(model).__name__ == cls_name
    # pyvene loads GPT-2 with eager attention and the others with transformers' default
    if cls_name.startswith("GPT2"):
        assert model.config._attn_implementation == "eager"
    elif cls_name == "LlamaForCausalLM":
        assert model.config._attn_implementation == "sdpa"
    assert next(model.parameters()).dtype == torch.float32
    assert pv.IntervenableModel({"layer": n_layers - 1, "component": "block_output"}, model=model) is not None


def test_hf_factory_rejects_a_config_of_another_family():
    with pytest.raises(ConfigError, match="GPT2Config"):
        compat.create_gpt2_lm(config=LlamaConfig())


def test_create_gpt2_loads_by_name_with_from_pretrained(tmp_path, bpe):
    torch.manual_seed(0)
    saved = GPT2Model(tiny_gpt2_config())
    saved.save_pretrained(tmp_path)
    bpe.save_pretrained(tmp_path)
    config, tok, model = compat.create_gpt2(name=str(tmp_path))
    assert type(model) is GPT2Model and config.n_embd == 24
    assert model.config._attn_implementation == "eager"
    for (name, p), (_, q) in zip(saved.state_dict().items(), model.state_dict().items()):
        assert torch.equal(p, q), name
    assert tok("The capital")["input_ids"] == bpe("The capital")["input_ids"]
    # with config=, a cached/local tokenizer is still found and no warning is raised
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tok2, lm = compat.create_gpt2_lm(name=str(tmp_path), config=tiny_gpt2_config())
    assert tok2 is not None and isinstance(lm, GPT2LMHeadModel)


def test_create_gpt2_names_what_it_could_not_load(tmp_path):
    with pytest.raises(LoadError, match="config=") as info:
        compat.create_gpt2(name=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value, OSError)


# ------------------------------------------------------ interventions on the toy models


@pytest.fixture
def one_layer_mlp():
    torch.manual_seed(0)
    return MLPForClassification(
        MLPConfig(h_dim=3, n_layer=1, pdrop=0.0, num_classes=5, include_bias=False, squeeze_output=False)
    ).eval()


def test_mlp_block_output_interchange_matches_hand_math(one_layer_mlp):
    mlp = one_layer_mlp
    base, source = torch.randn(2, 1, 3), torch.randn(2, 1, 3)
    w1, ws = mlp.mlp.h[0].ff1.weight, mlp.score.weight
    act = mlp.mlp.h[0].act
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_output", "subspace_partition": None}, model=mlp)
    out = pvm({"inputs_embeds": base}, [{"inputs_embeds": source}], unit_locations={"sources->base": 0})[1]
    torch.testing.assert_close(out[0], act(source @ w1.T) @ ws.T)


def test_mlp_block_input_subspace_interchange(one_layer_mlp):
    mlp = one_layer_mlp
    base, source = torch.randn(2, 1, 3), torch.randn(2, 1, 3)
    w1, ws = mlp.mlp.h[0].ff1.weight, mlp.score.weight
    act = mlp.mlp.h[0].act
    pvm = pv.IntervenableModel({"layer": 0, "component": "block_input"}, model=mlp)
    out = pvm({"inputs_embeds": base}, [{"inputs_embeds": source}],
              unit_locations={"sources->base": 0}, subspaces=[[[0, 2]] * 2])[1]
    mixed = base.clone()
    mixed[..., [0, 2]] = source[..., [0, 2]]
    torch.testing.assert_close(out[0], act(mixed @ w1.T) @ ws.T)


def test_mlp_activation_by_module_path_addition(one_layer_mlp):
    # pyvene's "mlp_activation" is the output of mlp.h[i].act; addressed here by path.
    mlp = one_layer_mlp
    base = torch.randn(2, 1, 3)
    delta = torch.tensor([0.5, -1.0, 2.0])
    w1, ws = mlp.mlp.h[0].ff1.weight, mlp.score.weight
    act = mlp.mlp.h[0].act
    pvm = pv.IntervenableModel(
        {"layer": 0, "component": "mlp.h[%s].act.output", "intervention_type": pv.AdditionIntervention,
         "source_representation": delta},
        model=mlp,
    )
    out = pvm({"inputs_embeds": base}, unit_locations={"base": 0})[1]
    torch.testing.assert_close(out[0], (act(base @ w1.T) + delta) @ ws.T)


def test_gru_classifier_cell_path_resolves_to_the_cell_stack():
    # The stack gru.cells and its width are found from the config's standard names.
    gru = GRUForClassification(GRUConfig(h_dim=8, n_layer=2))
    from pyvene_like.sites import ModelLayout, resolve_site

    layout = ModelLayout(gru)
    site = resolve_site(layout, 1, "block_output", "pos")
    assert site.module is gru.gru.cells[1] and site.width == 8
    site = resolve_site(ModelLayout(MLPForClassification(MLPConfig(h_dim=3, n_layer=2))), 1, "block_input", "pos")
    assert site.path == "mlp.h.1" and site.width == 3


def test_mlp_activation_by_name_with_subspace_partition(one_layer_mlp):
    # pyvene's name for the output of mlp.h[i].act; the toy family registers that role.
    mlp = one_layer_mlp
    base, source = torch.randn(2, 1, 3), torch.randn(2, 1, 3)
    w1, ws = mlp.mlp.h[0].ff1.weight, mlp.score.weight
    act = mlp.mlp.h[0].act
    pvm = pv.IntervenableModel(
        {"layer": 0, "component": "mlp_activation", "subspace_partition": [[0, 1], [1, 3]]}, model=mlp
    )
    out = pvm({"inputs_embeds": base}, [{"inputs_embeds": source}],
              unit_locations={"sources->base": 0}, subspaces=[[[1]] * 2])[1][0]
    mixed = act(base @ w1.T)
    mixed[..., 1:3] = act(source @ w1.T)[..., 1:3]
    torch.testing.assert_close(out, mixed @ ws.T)


# ------------------------------------------------------- pyvene's CausalModel (per-example form)


@pytest.fixture
def and_model():
    return pv.CausalModel(
        ["A", "B", "C"],
        {"A": [False, True], "B": [False, True], "C": [False, True]},
        {"A": [], "B": [], "C": ["A", "B"]},
        {"A": lambda: True, "B": lambda: False, "C": lambda a, b: a and b},
    )


def test_pyvene_causal_model_structure(and_model):
    from pyvene_like.training.causal_model import ExampleCausalModel

    assert isinstance(and_model, ExampleCausalModel) and isinstance(and_model, pv.CausalModel)
    assert (and_model.inputs, and_model.outputs) == (["A", "B"], ["C"])
    assert and_model.timesteps == {"A": 0, "B": 0, "C": 1}
    classes = and_model.generate_equiv_classes()
    assert classes == {"C": {False: [{"A": False, "B": False}, {"A": False, "B": True}, {"A": True, "B": False}],
                             True: [{"A": True, "B": True}]}}
    # The keyword form (all four dicts named) is pyvene's too; the batched form is untouched.
    kw = pv.CausalModel(variables=["A", "B", "C"], values=and_model.values, parents=and_model.parents,
                        functions=and_model.functions)
    assert isinstance(kw, ExampleCausalModel)
    batched = pv.CausalModel(["A", "B", "C"], parents={"C": ["A", "B"]}, functions={"C": torch.logical_and},
                             values={"A": [False, True], "B": [False, True]})
    assert not isinstance(batched, ExampleCausalModel)


def test_pyvene_causal_model_runs_on_dicts(and_model):
    assert and_model.run_forward() == {"A": True, "B": False, "C": False}  # the inputs' defaults
    for a in (False, True):
        for b in (False, True):
            assert and_model.run_forward({"A": a, "B": b}) == {"A": a, "B": b, "C": a and b}
    assert and_model.run_forward({"A": False, "B": False, "C": True})["C"] is True  # fixed variable wins
    assert and_model.run_interchange({"A": True, "B": False}, {"B": {"A": False, "B": True}})["C"] is True
    assert and_model.run_interchange({"A": False, "B": False}, {"C": {"A": True, "B": True}})["C"] is True


def test_pyvene_causal_model_balanced_sampling_and_datasets(and_model):
    import random

    random.seed(0)
    outs = [and_model.run_forward(and_model.sample_input_tree_balanced())["C"] for _ in range(400)]
    assert 150 < sum(outs) < 250  # C is True for 1 of 4 uniform inputs, for half of balanced ones
    facts = and_model.generate_factual_dataset(3, sampler=lambda: {"A": True, "B": True})
    assert torch.equal(torch.stack([f["input_ids"] for f in facts]), torch.ones(3, 2))
    assert torch.equal(facts[0]["labels"], torch.tensor([1.0]))
    cf = and_model.generate_counterfactual_dataset(
        2, intervention_id=lambda iv: 0, batch_size=1,
        sampler=lambda **kw: {"A": True, "B": True} if kw else {"A": True, "B": False},
        intervention_sampler=lambda: {"B": True}, return_tensors=False)
    assert cf[0]["input_ids"] == {"A": True, "B": False} and cf[0]["source_input_ids"] == [{"A": True, "B": True}]
    assert (cf[0]["base_labels"]["C"], cf[0]["labels"]["C"], cf[0]["intervention_id"]) == (False, True, [0])


# ------------------------------------------------------------------ IntervenableModel surface


@pytest.fixture(scope="module")
def gpt2_tiny():
    torch.manual_seed(0)
    return GPT2Model(tiny_gpt2_config()).eval()


def _ids(seed, bsz=2, seq=5):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 400, (bsz, seq), generator=g)}


def _out(o):
    return o[0] if isinstance(o, tuple) else o


def _block_output(model, ids, layer):
    """The output of block ``layer``, read by a hand-written hook."""
    got = {}
    h = model.h[layer].register_forward_hook(lambda m, a, o: got.setdefault("x", _out(o).clone()))
    try:
        with torch.no_grad():
            model(**ids)
    finally:
        h.remove()
    return got["x"]


def test_interventions_are_a_list_and_a_mapping(gpt2_tiny):
    im = pv.IntervenableModel([pv.RepresentationConfig(0, "block_output"),
                               pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space")],
                              gpt2_tiny)
    keys = im.interventions.keys()
    assert keys == im.intervention_keys and all("#" in k and "block_output" in k for k in keys)
    assert im.interventions[keys[1]] is im.interventions[1] and keys[1] in im.interventions
    assert [k for k, _ in im.interventions.items()] == keys and im.interventions.values() == list(im.interventions)
    state = im.interventions.state_dict()  # keyed by position, as before: checkpoints stay readable
    assert state and all(k.startswith("1.rotate_layer.") for k in state)
    with pytest.raises(KeyError, match="no intervention under this key"):
        im.interventions["layer_9.block_output.pos#0"]


def test_set_device_save_load_and_flags(gpt2_tiny, tmp_path):
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space"),
                              gpt2_tiny)
    assert im.use_fast is False and im.is_model_stateless
    assert im.set_device("cpu") is im and im.get_device() == torch.device("cpu")
    im.save(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob("*.bin"))  # safetensors, never a pickle
    loaded = pv.IntervenableModel.load(tmp_path / "saved", model=gpt2_tiny)
    torch.testing.assert_close(loaded.interventions[0].rotate_layer.weight, im.interventions[0].rotate_layer.weight)
    gru = compat.create_gru_classifier(GRUConfig(h_dim=4, n_layer=1))[2]
    assert not pv.IntervenableModel({"component": "gru.cells[0].output", "unit": "pos"}, gru).is_model_stateless


def test_none_source_entries_skip_their_interventions(gpt2_tiny):
    im = pv.IntervenableModel([{"layer": 0, "component": "block_output"}] * 3, gpt2_tiny)
    base, src = _ids(1), _ids(2)
    locs = lambda i: [[[4]] * 2 if j == i else None for j in range(3)]  # noqa: E731
    outs = [im(base, [src if j == i else None for j in range(3)], {"sources->base": (locs(i), locs(i))})[1]
            for i in range(3)]
    # Reference: position 4 of block 0's output replaced by the source's, by a hand-written hook.
    patched = _block_output(gpt2_tiny, src, 0)[:, 4]

    def hook(m, a, o):
        _out(o)[:, 4] = patched

    h = gpt2_tiny.h[0].register_forward_hook(hook)
    with torch.no_grad():
        ref = gpt2_tiny(**base).last_hidden_state
    h.remove()
    for out in outs:
        torch.testing.assert_close(out.last_hidden_state, ref)


def test_base_only_call_runs_the_model_when_interventions_need_sources(gpt2_tiny):
    im = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention_type": pv.AdditionIntervention},
                              gpt2_tiny)
    base = _ids(3)
    with torch.no_grad():
        torch.testing.assert_close(im(base)[1].last_hidden_state, gpt2_tiny(**base).last_hidden_state)
    with pytest.raises(ConfigError, match="needs a source"):  # with locations, a source is still required
        im(base, unit_locations={"base": 1})


def test_one_source_representation_goes_to_every_intervention(gpt2_tiny):
    im = pv.IntervenableModel([{"layer": i, "component": "block_output", "intervention_type": "addition"}
                               for i in range(2)], gpt2_tiny)
    base, vec = _ids(4), torch.randn(24)
    out = im(base, unit_locations={"base": 2}, source_representations=vec)[1].last_hidden_state
    def add(m, a, o):
        _out(o)[:, 2] += vec  # in place; the hook returns None, so the output object stays

    hooks = [gpt2_tiny.h[i].register_forward_hook(add) for i in range(2)]
    with torch.no_grad():
        ref = gpt2_tiny(**base).last_hidden_state
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, ref)


def test_flat_subspaces_apply_to_every_example(gpt2_tiny):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", "subspace_partition": [[0, 4], [4, 24]]},
                              gpt2_tiny)
    base, src = _ids(5), _ids(6)
    flat = im(base, [src], {"sources->base": 1}, subspaces=[0])[1].last_hidden_state
    nested = im(base, [src], {"sources->base": 1}, subspaces=[[[0]] * 2])[1].last_hidden_state
    torch.testing.assert_close(flat, nested)


def test_train_and_eval_alignment_take_pyvene_batches():
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(tiny_gpt2_config(n_layer=1)).eval()
    lm.requires_grad_(False)
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": "low_rank_rotated_space",
                               "low_rank_dimension": 1}, lm)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 400, (4, 6), generator=g),
                "source_input_ids": torch.randint(0, 400, (4, 6), generator=g),
                "labels": torch.randint(0, 400, (4, 6), generator=g),
                "source_0->base.0.pos": [[5]] * 4, "source_0->base.1.pos": [[5]] * 4} for _ in range(2)]

    def loss_fn(logits, labels):
        return torch.nn.functional.cross_entropy(logits[:, -1], labels[:, -1])

    def acc(preds, labels):
        return float((preds[0][:, -1].argmax(-1) == labels[0][:, -1]).float().mean())

    before = im.interventions[0].rotate_layer.weight.detach().clone()
    im.train_alignment(batches, loss_fn, acc, None, epochs=2, lr=0.1)
    assert not torch.equal(before, im.interventions[0].rotate_layer.weight)
    res = im.eval_alignment(batches, acc, None)
    expected = sum(acc([im(b_in := {"input_ids": b["input_ids"]}, [{"input_ids": b["source_input_ids"]}],
                           {"sources->base": ([[[5]] * 4], [[[5]] * 4])})[1].logits], [b["labels"]])
                   for b in batches) / 2
    assert res == pytest.approx(expected)
    del b_in


def test_type_to_module_mapping_declares_a_component_for_a_class():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8,
                                             vocab_size=50, dropout_rate=0.0)).eval()
    hook_kind = pv.models.constants.CONST_OUTPUT_HOOK
    compat.type_to_module_mapping[type(t5)] = {"mlp_output": ("encoder.block[%s].layer[1]", hook_kind)}
    compat.type_to_dimension_mapping[type(t5)] = {"mlp_output": ("d_model/num_heads", "d_model")}
    try:
        im = pv.IntervenableModel({"layer": 1, "component": "mlp_output",
                                   "source_representation": torch.zeros(8)}, model=t5)
        assert im.sites[0].module is t5.encoder.block[1].layer[1] and im.sites[0].width == 8
    finally:
        compat.type_to_module_mapping.pop(type(t5))
        compat.type_to_dimension_mapping.pop(type(t5))
    # Without the declaration, the component is introspected (and needs a stack prefix on T5).
    with pytest.raises(pv.SiteError, match="several layer stacks"):
        pv.IntervenableModel({"layer": 1, "component": "mlp_output"}, model=t5)


# ----------------------------------------------------------- pyvene's GRU: components, unit "t"


def test_gru_components_resolve_to_the_cell_parts():
    gru = compat.create_gru_classifier(GRUConfig(h_dim=8, n_layer=2))[2]
    cell = gru.gru.cells[1]
    expect = {"cell_output": (cell, "output", 8), "cell_input": (cell, "input", 8),
              "x2h_output": (cell.x2h, "output", 24), "reset_gate_input": (cell.reset_act, "input", 8),
              "new_h2h_output": (cell.h2h, "output", 8)}
    for component, (module, io, width) in expect.items():
        site = pv.IntervenableModel({"component": component, "layer": 1, "intervention_type": "zero"}, gru).sites[0]
        assert (site.module, site.io, site.width) == (module, io, width)
    third = pv.IntervenableModel({"component": "new_h2h_output", "layer": 1, "intervention_type": "zero"}, gru).sites[0]
    assert torch.equal(third.columns, torch.arange(16, 24))


def test_gru_unit_t_is_the_time_step():
    torch.manual_seed(0)
    gru = compat.create_gru_classifier(GRUConfig(h_dim=8, n_layer=1, pdrop=0.0))[2].eval()
    x = torch.rand(2, 5, 8)
    im = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": pv.ZeroIntervention}, gru)
    out = im(base={"inputs_embeds": x}, unit_locations={"base": 3})[1]
    calls = []

    def zero_fourth_call(m, a, o):
        calls.append(1)
        return torch.zeros_like(o) if len(calls) == 4 else None

    h = gru.gru.cells[0].register_forward_hook(zero_fourth_call)
    ref = gru(inputs_embeds=x)
    h.remove()
    torch.testing.assert_close(out[0], ref[0])
    seen = []
    h = gru.gru.cells[0].register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    gru(inputs_embeds=x)
    h.remove()
    col = pv.IntervenableModel({"component": "cell_output", "unit": "t", "intervention_type": "collect"}, gru)
    (_, acts), _ = col(base={"inputs_embeds": x}, unit_locations={"base": [[[1, 2]] * 2]})
    torch.testing.assert_close(acts[0], torch.stack([seen[1], seen[2]], 1))
    with pytest.raises(pv.LocationError, match="time step 7 is out of range.*ran 5 times"):
        im(base={"inputs_embeds": x}, unit_locations={"base": 7})


def test_a_function_returning_none_leaves_the_units_unchanged(gpt2_tiny):
    seen = []
    im = pv.IntervenableModel({"layer": 0, "component": "block_output",
                               "intervention_type": lambda b, s: seen.append(b.clone())}, gpt2_tiny)
    base, src = _ids(7), _ids(8)
    out = im(base, [src], {"sources->base": 1})[1]
    with torch.no_grad():
        ref = gpt2_tiny(**base)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    torch.testing.assert_close(seen[0], _block_output(gpt2_tiny, base, 0)[:, 1:2])


def test_one_location_list_serves_the_whole_batch(gpt2_tiny):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2_tiny)
    base, src = _ids(9, bsz=3), _ids(10, bsz=3)
    one = im(base, [src], {"sources->base": ([[[3]]], [[[4]]])})[1].last_hidden_state
    every = im(base, [src], {"sources->base": ([[[3]] * 3], [[[4]] * 3])})[1].last_hidden_state
    torch.testing.assert_close(one, every)
    with pytest.raises(pv.LocationError, match="has 2 examples but the batch has 3"):
        im(base, [src], {"sources->base": ([[[3]] * 2], [[[4]] * 2])})


# ------------------------------------------------------------- pyvene's module paths (pv.models)


@pytest.mark.parametrize("path, names", [
    ("basic_utils", ["embed_to_distrib", "top_vals", "format_token", "set_seed", "count_parameters"]),
    ("configuration_intervenable_model", ["RepresentationConfig", "IntervenableConfig"]),
    ("intervenable_base", ["IntervenableModel"]),
    ("interventions", ["VanillaIntervention", "CollectIntervention", "LowRankRotatedSpaceIntervention"]),
    ("constants", ["CONST_INPUT_HOOK", "CONST_OUTPUT_HOOK"]),
    ("mlp.modelings_mlp", ["MLPConfig", "MLPForClassification"]),
    ("mlp.modelings_intervenable_mlp", ["create_mlp_classifier"]),
    ("gpt2.modelings_intervenable_gpt2", ["create_gpt2", "create_gpt2_lm"]),
    ("gpt_neo.modelings_intervenable_gpt_neo", ["create_gpt_neo"]),
    ("llama.modelings_intervenable_llama", ["create_llama"]),
    ("gru.modelings_gru", ["GRUConfig", "GRUForClassification"]),
    ("gru.modelings_intervenable_gru", ["create_gru_classifier"]),
])
def test_pyvene_module_paths_give_the_top_level_objects(path, names):
    import importlib

    module = importlib.import_module(f"pyvene_like.models.{path}")
    for name in names:
        expected = getattr(pv, name, None)
        if expected is None:
            expected = getattr(compat, name)
        assert getattr(module, name) is expected, f"pyvene_like.models.{path}.{name}"
    namespace: dict = {}
    exec(f"from pyvene_like.models.{path} import *", namespace)
    assert set(names) <= set(namespace)


def test_pv_models_constants_and_mappings_are_reachable_from_the_top_level():
    assert pv.models.constants.CONST_OUTPUT_HOOK == "register_forward_hook"
    assert pv.models.constants.CONST_INPUT_HOOK == "register_forward_pre_hook"
    assert pv.type_to_module_mapping is compat.type_to_module_mapping
    assert pv.type_to_dimension_mapping is compat.type_to_dimension_mapping


# ------------------------------------------- pyvene's config surface: model_type, add_intervention


def test_model_type_is_kept_and_a_shared_type_is_reported_as_that_type(gpt2_tiny):
    cfg = pv.IntervenableConfig(model_type=type(gpt2_tiny),
                                representations=[pv.RepresentationConfig(0, "block_output", "pos", 1)],
                                intervention_types=pv.VanillaIntervention)
    assert cfg.model_type is GPT2Model
    assert cfg.intervention_types is pv.VanillaIntervention
    per_rep = pv.IntervenableConfig([{"layer": 0, "intervention_type": pv.ZeroIntervention}, {"layer": 1}])
    assert per_rep.intervention_types == [pv.ZeroIntervention, pv.VanillaIntervention]


def test_add_intervention_appends_a_representation_that_runs(gpt2_tiny):
    cfg = pv.IntervenableConfig({"layer": 0, "component": "block_output", "intervention_type": pv.ZeroIntervention})
    cfg.add_intervention({"layer": 1, "component": "block_output", "intervention_type": pv.CollectIntervention})
    assert cfg.intervention_types == [pv.ZeroIntervention, pv.CollectIntervention]
    im = pv.IntervenableModel(cfg, gpt2_tiny)
    base = _ids(3)
    (_, collected), _ = im(base, unit_locations={"base": 2})
    # by hand: zero block 0's output at position 2, read block 1's output there
    got = {}

    def zero_at_2(m, a, o):
        _out(o)[:, 2] = 0.0

    def read_at_2(m, a, o):
        got["x"] = _out(o)[:, 2:3].clone()

    h0 = gpt2_tiny.h[0].register_forward_hook(zero_at_2)
    h1 = gpt2_tiny.h[1].register_forward_hook(read_at_2)
    try:
        with torch.no_grad():
            gpt2_tiny(**base)
    finally:
        h0.remove()
        h1.remove()
    torch.testing.assert_close(collected[0], got["x"])
    with pytest.raises(ConfigError, match="add_intervention: expected"):
        cfg.add_intervention(3)


def test_a_partition_may_list_its_ranges_in_any_order():
    iv = pv.VanillaIntervention(subspace_partition=[[1, 3], [0, 1]])
    base = torch.arange(8.0).view(1, 2, 4)
    source = base + 100
    out = iv(base, source, subspaces=[[0]])  # subspace 0 is dims 1 and 2
    expected = base.clone()
    expected[..., 1:3] = source[..., 1:3]
    assert torch.equal(out, expected)
    out = iv(base, source, subspaces=[[1]])  # subspace 1 is dim 0
    expected = base.clone()
    expected[..., 0] = source[..., 0]
    assert torch.equal(out, expected)


def test_a_constant_source_intervention_needs_no_source_run(gpt2_tiny):
    class Times3(pv.ConstantSourceIntervention):
        def __init__(self, embed_dim, **kwargs):
            super().__init__()

        def forward(self, base, source=None, subspaces=None):
            assert source is None
            return base * 3.0

    assert isinstance(pv.ZeroIntervention(), pv.ConstantSourceIntervention)
    assert isinstance(pv.CollectIntervention(), pv.ConstantSourceIntervention)
    im = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention_type": Times3}, gpt2_tiny)
    base = _ids(4)
    out = im(base, unit_locations={"base": 3})[1].last_hidden_state

    def times3_at_3(m, a, o):
        o = o.clone()
        o[:, 3] *= 3.0
        return o

    h = gpt2_tiny.h[1].mlp.register_forward_hook(times3_at_3)
    try:
        with torch.no_grad():
            ref = gpt2_tiny(**base).last_hidden_state
    finally:
        h.remove()
    torch.testing.assert_close(out, ref)


def test_use_fast_reads_the_first_examples_subspaces_for_every_example_as_in_pyvene():
    base = torch.arange(12.0).view(2, 1, 6)
    src = base + 50
    fast = pv.VanillaIntervention(subspace_partition=[[0, 2], [2, 6]], use_fast=True)
    slow = pv.VanillaIntervention(subspace_partition=[[0, 2], [2, 6]])
    assert torch.equal(fast(base, src, [[0], [1]]), slow(base, src, [[0], [0]]))
    assert not torch.equal(fast(base, src, [[0], [1]]), slow(base, src, [[0], [1]]))
    with pytest.raises(ConfigError, match="use_fast must be True or False"):
        pv.VanillaIntervention(use_fast="yes")


def test_a_function_given_as_intervention_runs_on_the_whole_base_activation(gpt2_tiny):
    base = _ids(5, bsz=1)
    mask = torch.ones(1, 5, 24)
    mask[:, 3] = 0.0
    im = pv.IntervenableModel({"component": "h[0].mlp.output", "intervention": lambda b, s: b * mask}, gpt2_tiny)
    assert isinstance(im.interventions[0], pv.LambdaIntervention)
    out = im(base=base)[1].last_hidden_state
    h = gpt2_tiny.h[0].mlp.register_forward_hook(lambda m, a, o: o * mask)
    try:
        with torch.no_grad():
            ref = gpt2_tiny(**base).last_hidden_state
    finally:
        h.remove()
    torch.testing.assert_close(out, ref)


def test_a_field_the_type_does_not_take_is_ignored_with_a_warning(gpt2_tiny):
    base, src = _ids(6), _ids(7)
    with pytest.warns(PyveneLikeWarning, match="low_rank_dimension=24 is not used by VanillaIntervention"):
        im = pv.IntervenableModel({"layer": 0, "component": "block_output", "low_rank_dimension": 24}, gpt2_tiny)
    plain = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2_tiny)
    torch.testing.assert_close(im(base, [src], {"sources->base": 2})[1].last_hidden_state,
                               plain(base, [src], {"sources->base": 2})[1].last_hidden_state)


def test_train_alignment_warms_up_over_ten_percent_of_the_steps_unrounded():
    # pyvene's schedule: warm-up of 0.1 * steps (not rounded), so a run of fewer than ten steps
    # starts at learning rate 0, and the first step leaves the rotation as it was
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(tiny_gpt2_config(n_layer=1)).eval()
    lm.requires_grad_(False)
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": "low_rank_rotated_space",
                               "low_rank_dimension": 2}, lm)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 400, (4, 6), generator=g),
             "source_input_ids": torch.randint(0, 400, (4, 6), generator=g),
             "labels": torch.randint(0, 400, (4, 6), generator=g),
             "source_0->base.0.pos": [[5]] * 4, "source_0->base.1.pos": [[5]] * 4}
    before = im.interventions[0].rotate_layer.weight.detach().clone()
    im.train_alignment([batch], lambda logits, labels: logits[:, -1].logsumexp(-1).mean(), lambda preds, labels: 0.0,
                       None, epochs=1, lr=0.5)
    torch.testing.assert_close(im.interventions[0].rotate_layer.weight, before)
    im.train_alignment([batch] * 2, lambda logits, labels: logits[:, -1].logsumexp(-1).mean(), lambda preds, labels: 0.0,
                       None, epochs=1, lr=0.5)
    assert not torch.allclose(im.interventions[0].rotate_layer.weight, before)


# ------------------------------------------- interventions called directly (pyvene's forms)


def _swap_by_hand(base, source, dims_of):
    """``dims_of(b, u)`` -> the dims of example b, unit u that take the source's values."""
    out = base.clone()
    for b in range(base.shape[0]):
        for u in range(base.shape[1]):
            for d in dims_of(b, u):
                out[b, u, d] = source[b, u, d]
    return out


def test_subspaces_given_per_unit_apply_along_the_units_when_called_directly():
    base = torch.arange(36.0).view(2, 3, 6)
    source = base + 100
    rows = [[1, 0], [0, 1], [1, 2]]  # 3 lists for 3 units (2 examples)
    out = pv.VanillaIntervention()(base, source, subspaces=rows)
    assert torch.equal(out, _swap_by_hand(base, source, lambda b, u: rows[u]))
    part = [[0, 2], [2, 4], [4, 6]]
    out = pv.VanillaIntervention(subspace_partition=part)(base, source, subspaces=rows)
    dims = [[d for i in r for d in range(*part[i])] for r in rows]
    assert torch.equal(out, _swap_by_hand(base, source, lambda b, u: dims[u]))
    # a source of one unit's width is broadcast to every example and unit
    vec = torch.arange(6.0) + 500
    out = pv.VanillaIntervention(subspace_partition=part)(base, vec, subspaces=rows)
    assert torch.equal(out, _swap_by_hand(base, vec.expand_as(base), lambda b, u: dims[u]))


def test_per_example_lists_win_when_there_are_as_many_examples_as_units():
    base = torch.arange(24.0).view(2, 2, 6)
    source = base + 100
    rows = [[0], [5]]
    out = pv.VanillaIntervention()(base, source, subspaces=rows)
    assert torch.equal(out, _swap_by_hand(base, source, lambda b, u: rows[b]))


def test_per_example_and_unit_lists_when_called_directly():
    base = torch.arange(36.0).view(2, 3, 6)
    source = base + 100
    rows = [[[0], [1, 2], [5]], [[3], [3], [0, 4]]]
    out = pv.AdditionIntervention()(base, source, subspaces=rows)
    expected = base.clone()
    for b in range(2):
        for u in range(3):
            expected[b, u, rows[b][u]] += source[b, u, rows[b][u]]
    assert torch.equal(out, expected)
    with pytest.raises(pv.LocationError, match=r"\[batch\]\[units\]\[ids\] lists must be 2 lists of 3 id lists"):
        pv.AdditionIntervention()(base, source, subspaces=[[[0], [1]], [[0], [1]]])
    with pytest.raises(pv.LocationError, match=r"got 4 per-example lists for a batch of 2 or 3 per-unit lists"):
        pv.VanillaIntervention()(base, source, subspaces=[[0]] * 4)


def test_embed_dim_narrower_than_the_units_means_the_first_embed_dim_features():
    base = torch.arange(36.0).view(2, 3, 6)
    source = base + 100
    out = pv.VanillaIntervention(embed_dim=2)(base, source)
    assert torch.equal(out, _swap_by_hand(base, source, lambda b, u: [0, 1]))
    out = pv.SubtractionIntervention(embed_dim=4)(base, source)
    expected = base.clone()
    expected[..., :4] -= source[..., :4]
    assert torch.equal(out, expected)
    assert torch.equal(pv.CollectIntervention(embed_dim=3)(base), base[..., :3])
    with pytest.raises(pv.ShapeError, match=r"units of width 6 are narrower than embed_dim=8"):
        pv.VanillaIntervention(embed_dim=8)(base, source)


def test_inside_a_model_embed_dim_must_still_be_the_sites_width(gpt2_tiny):
    with pytest.raises(ConfigError, match=r"embed_dim=2 does not match the width of the site"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention=pv.VanillaIntervention(embed_dim=2)),
                             gpt2_tiny)


def test_collect_with_subspaces_returns_the_selected_dims_in_the_order_named():
    base = torch.arange(36.0).view(2, 3, 6)
    part = [[0, 2], [2, 4], [4, 6]]
    rows = [[1, 0], [0, 1], [1, 2]]
    out = pv.CollectIntervention(subspace_partition=part)(base, None, subspaces=rows)
    dims = [[d for i in r for d in range(*part[i])] for r in rows]
    expected = torch.stack([torch.stack([base[b, u, dims[u]] for u in range(3)]) for b in range(2)])
    assert torch.equal(out, expected)
    with pytest.raises(pv.LocationError, match=r"the rows select different numbers of dims \(\[1, 2\]\)"):
        pv.CollectIntervention()(base, None, subspaces=[[0], [0, 1]])


def test_index_list_partitions_name_their_dims_and_two_ints_are_a_range():
    iv = pv.VanillaIntervention(subspace_partition=[[0, 1, 2], [3, 4], [5]])
    base = torch.arange(12.0).view(2, 1, 6)
    source = base + 100
    assert torch.equal(iv(base, source, subspaces=[[1]]), _swap_by_hand(base, source, lambda b, u: [3]))
    assert torch.equal(iv(base, source, subspaces=[[0, 2]]), _swap_by_hand(base, source, lambda b, u: [0, 1, 2, 5]))
    # the dims of a listed subspace may be anywhere, in any order
    iv = pv.CollectIntervention(subspace_partition=[[5, 0, 3], [1, 2]])
    assert torch.equal(iv(base, None, subspaces=[[0]]), base[..., [5, 0, 3]])
    assert iv.get_config()["subspace_partition"] == [[5, 0, 3], [1, 2]]


def test_subspaces_per_example_and_unit_in_a_model_call_match_hand_hooks(gpt2_tiny):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output",
                               "subspace_partition": [[0, 1, 7], [2, 3], [10, 20, 23]]}, gpt2_tiny)
    base, src = _ids(5), _ids(6)
    rows = [[[0], [2]], [[1, 2], [0]]]  # [batch][units][ids]
    got = im(base, [src], {"sources->base": ([[[1, 3]] * 2], [[[1, 3]] * 2])}, subspaces=[rows])[1].last_hidden_state
    groups = [[0, 1, 7], [2], [10, 20, 23]]
    s = _block_output(gpt2_tiny, src, 0)

    def patch(m, a, o):
        x = _out(o).clone()
        for b in range(2):
            for u, pos in enumerate([1, 3]):
                dims = [d for i in rows[b][u] for d in groups[i]]
                x[b, pos, dims] = s[b, pos, dims]
        return (x,) + tuple(o[1:]) if isinstance(o, tuple) else x

    h = gpt2_tiny.h[0].register_forward_hook(patch)
    try:
        with torch.no_grad():
            expected = gpt2_tiny(**base).last_hidden_state
    finally:
        h.remove()
    torch.testing.assert_close(got, expected)
    with pytest.raises(pv.LocationError, match=r"got 3 per-example lists for .* on a batch of 2"):
        im(base, [src], {"sources->base": ([[[1, 3]] * 2], [[[1, 3]] * 2])}, subspaces=[[[0], [1], [2]]])


def test_boundless_starts_as_pyvenes_soft_window_and_cools_to_whole_dims():
    iv = pv.BoundlessRotatedSpaceIntervention(embed_dim=6)
    R = iv.rotate_layer.weight.detach()
    base, source = torch.arange(12.0).view(2, 6), torch.arange(12.0, 24.0).view(2, 6)
    # pyvene's untrained window: sigmoid(i/T) * sigmoid((b*n - i)/T) at T = 50, here at i + 1/2
    c = torch.arange(6.0) + 0.5
    w = torch.sigmoid(c / 50) * torch.sigmoid((3 - c) / 50)
    assert 0.25 < float(w.min()) and float(w.max()) < 0.27
    expected = base + ((source - base) @ R * w) @ R.T
    torch.testing.assert_close(iv(base, source), expected)
    iv.set_temperature(0.01)
    rotated = iv(base, source) @ R
    torch.testing.assert_close(rotated[:, :3], (source @ R)[:, :3])  # dim 0 whole, not half
    torch.testing.assert_close(rotated[:, 3:], (base @ R)[:, 3:])
