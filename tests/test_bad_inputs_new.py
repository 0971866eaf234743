"""Bad inputs to the newer entry points (head ablation, fluency measures, patching sweeps and
their saved results): each is refused with a library error naming the field, the value and what
is accepted, never a raw Python/torch error and never read silently; the model comes back as it
was. Each case failed (raw error or silent acceptance) before the checks were added."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file

from pyvene_like.analysis import AttentionHead, ablate_heads, head_means
from pyvene_like.analysis import fluency as F
from pyvene_like.analysis import patching as P
from pyvene_like.errors import ConfigError, LoadError, LocationError, ShapeError
from tests.conftest import make_gpt2

HD = 16  # make_gpt2: n_embd 64, 4 heads, 4 layers, vocab 1000, 64 positions


@pytest.fixture(scope="module")
def gpt2():
    return make_gpt2(seed=3)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 1000, (2, 5), generator=g)}


@pytest.fixture(scope="module")
def corr():
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 1000, (2, 5), generator=g)}


def _state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    params = [p.detach().clone() for p in model.parameters()]
    flags = [m.training for m in model.modules()] + [p.requires_grad for p in model.parameters()]
    return hooks, params, flags


def _assert_same(model, before):
    hooks, params, flags = _state(model)
    assert hooks == before[0]
    assert flags == before[2]
    assert all(torch.equal(a, b) for a, b in zip(params, before[1]))


# -- ablate_heads / head_means -------------------------------------------------------------------
@pytest.mark.parametrize("mean, match", [
    (torch.full((HD,), math.nan), r"means\[L0H1\] must hold finite numbers"),
    (torch.full((HD,), math.inf), r"means\[L0H1\] must hold finite numbers"),
    (torch.zeros(HD, dtype=torch.long), r"means\[L0H1\] must be a floating-point tensor, got dtype torch\.int64"),
    (torch.zeros(HD, dtype=torch.bool), r"means\[L0H1\] must be a floating-point tensor, got dtype torch\.bool"),
    (torch.zeros(HD, dtype=torch.complex64), r"must be a floating-point tensor, got dtype torch\.complex64"),
    ("x", r"means\[L0H1\] must be a floating-point tensor .*got str"),
    (None, r"means\[L0H1\] must be a floating-point tensor .*got NoneType"),
])
@pytest.mark.parametrize("positions", [None, 2, [0, 1]])
def test_ablate_heads_means_are_checked_not_cast(gpt2, ids, mean, match, positions):
    """NaN/inf means ran, int/bool/complex means were cast; a string or None escaped raw."""
    before = _state(gpt2)
    with pytest.raises(ConfigError, match=match):
        ablate_heads(gpt2, ids, [(0, 1)], positions, kind="mean", means={AttentionHead(0, 1): mean})
    _assert_same(gpt2, before)


@pytest.mark.parametrize("inputs, error, match", [
    ({"input_ids": torch.zeros(2, 5)}, ShapeError, r"inputs\['input_ids'\] must be a \[batch, seq\] integer tensor.*float32"),
    ({"input_ids": torch.full((2, 5), 1000)}, ShapeError, r"token id 1000 is outside the model's vocabulary \(accepted: 0\.\.999\)"),
    ({"x": torch.zeros(2, 5)}, ConfigError, r"inputs need 'input_ids' or 'inputs_embeds', got keys \['x'\]"),
])
def test_ablate_heads_inputs_are_checked(gpt2, inputs, error, match):
    before = _state(gpt2)
    with pytest.raises(error, match=match):
        ablate_heads(gpt2, inputs, [(0, 1)])
    _assert_same(gpt2, before)


COL = "L0.head_attention_value_output.H1"


@pytest.mark.parametrize("column, match", [
    (["a", "b"], r"column 'L0\.head_attention_value_output\.H1' must hold one float vector"),
    ([[0.0] * HD, [1.0] * (HD - 1)], r"must hold one float vector \[head_dim\] per row"),
    ([0.5, 1.0], r"must hold one float vector \[head_dim\] per row.*shape \[2\]"),
    ([[True] * HD], r"must hold one float vector.*torch\.bool"),
    ([[1] * HD], r"must hold one float vector.*torch\.int64"),
    ([[math.nan] * HD], r"holds NaN or infinite values"),
])
def test_head_means_columns_are_checked(column, match):
    with pytest.raises(ConfigError, match=match):
        head_means(Dataset.from_dict({COL: column}), [(0, 1)])


@pytest.mark.parametrize("component", [5, None, ""])
def test_head_means_component_must_be_a_name(component):
    with pytest.raises(ConfigError, match=rf"component must be a head component name \(a str\), got {component!r}"):
        head_means(Dataset.from_dict({COL: [[0.0] * HD]}), [(0, 1)], component=component)


# -- fluency -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sentences, match", [
    (None, r"sentences must be a list of sentences .*got NoneType"),
    (5, r"sentences must be a list of sentences .*got int"),
    ("a b .", r"sentences must be a list of sentences .*got str"),
    ([". "], r"sentence 0 \('\.'\) must end with the end word '\.' and hold it only there, after at least one word"),
])
def test_corpus_grammar_sentences_are_checked(sentences, match):
    with pytest.raises(ConfigError, match=match):
        F.CorpusGrammar(sentences)


@pytest.mark.parametrize("texts", [None, 5, {"a .": 1}, (t for t in ["a ."]), "a b ."])
def test_grammar_rates_texts_are_checked(texts):
    with pytest.raises(ConfigError, match=r"texts must be a non-empty list of texts .*got"):
        F.grammar_rates(F.CorpusGrammar(["a b ."]), texts)


@pytest.mark.parametrize("flags, shown", [
    ([1, 0], "1"), ([2, 0], "2"), (["yes", "no"], "'yes'"), ([None, True], "None"),
    ([math.nan, True], "nan"), ([0.5, 1.0], "0.5"), (torch.tensor([1, 0]), None), ("TF", None), (None, None),
])
def test_gated_rates_flags_must_be_bools(flags, shown):
    """1, 2, 'yes', NaN and 0.5 were all read by truthiness; None escaped as a TypeError."""
    match = (rf"on_topic\[0\] must be True or False, got {shown}" if shown is not None
             else r"on_topic must be a list of bools, one per generation")
    with pytest.raises(ConfigError, match=match):
        F.gated_rates(flags, [True, False])


def test_gated_rates_takes_bool_arrays():
    import numpy as np
    got = F.gated_rates(torch.tensor([True, False]), np.array([True, True]))
    assert got["fluent_on_topic_rate"] == 0.5 and got["n"] == 2


@pytest.fixture(scope="module")
def seqs():
    return torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make, error, match", [
    (lambda s: None, ConfigError, r"generations must be a list of \(sequences, prompt_length\) pairs, got NoneType"),
    (lambda s: 5, ConfigError, r"generations must be a list .*got int"),
    (lambda s: [(s,)], ConfigError, r"generations\[0\] must be a \(sequences, prompt_length\) pair, got tuple of 1"),
    (lambda s: [(s, 3, 1)], ConfigError, r"generations\[0\] must be .*pair, got tuple of 3"),
    (lambda s: [s], ConfigError, r"generations\[0\] must be .*pair, got Tensor"),
    (lambda s: [(s + 1000, 3)], ShapeError, r"token id \d+ is outside the model's vocabulary \(accepted: 0\.\.999\)"),
    (lambda s: [(s.bool(), 3)], ShapeError, r"sequences must be a \[n, length\] tensor of token ids"),
    (lambda s: [(s.repeat(1, 20), 3)], ShapeError, r"sequences have 120 tokens, more than the model's 64 positions"),
])
def test_perplexity_generations_are_checked(gpt2, seqs, make, error, match):
    with pytest.raises(error, match=match):
        F.perplexity(gpt2, make(seqs))


@pytest.mark.parametrize("stop", [True, 1.5, -1, 1000, "x", math.nan, torch.tensor(3)])
def test_perplexity_stop_token_is_checked(gpt2, seqs, stop):
    """True, 1.5, -1 and 1000 were compared with the ids silently (nothing stops); 'x' escaped raw."""
    with pytest.raises(ConfigError, match=r"stop_token must be None or a token id \(an int in 0\.\.999\), got"):
        F.perplexity(gpt2, [(seqs, 3)], stop_token=stop)


@pytest.mark.parametrize("model", [None, "gpt2"])
def test_perplexity_model_is_checked(seqs, model):
    with pytest.raises(ConfigError, match=r"model must be a torch nn.Module \(a causal LM\), got"):
        F.perplexity(model, [(seqs, 3)])


# -- patching sweeps -----------------------------------------------------------------------------
SWEEPS = [pytest.param(lambda *a, **k: P.patching_sweep(*a, progress=False, **k), id="sweep"),
          pytest.param(P.attribution_patching, id="attribution")]
METRIC = P.logit_diff(3, 4)
HEADS = dict(component="head_attention_value_output", unit="h")


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layers=[True]), ConfigError, r"layers\[0\] must be an int in 0\.\.3, got True"),
    (dict(layers=[1.5]), ConfigError, r"layers\[0\] must be an int in 0\.\.3, got 1\.5"),
    (dict(layers=[4]), ConfigError, r"layers\[0\] must be an int in 0\.\.3, got 4"),
    (dict(layers=[-1]), ConfigError, r"layers\[0\] must be an int in 0\.\.3, got -1"),
    (dict(layers=[0, "1"]), ConfigError, r"layers\[1\] must be an int in 0\.\.3, got '1'"),
    (dict(layers=[0, 0]), ConfigError, r"layers must not repeat an entry, got \[0, 0\]"),
    (dict(layers=0), ConfigError, r"layers must be a non-empty list of ints in 0\.\.3, got 0"),
    (dict(layers=[]), ConfigError, r"layers must be a non-empty list"),
    (dict(layers={0: 1}), ConfigError, r"layers must be a non-empty list.*got \{0: 1\}"),
    (dict(heads=[True], **HEADS), ConfigError, r"heads\[0\] must be an int in 0\.\.3, got True"),
    (dict(heads=[1.5], **HEADS), ConfigError, r"heads\[0\] must be an int in 0\.\.3, got 1\.5"),
    (dict(heads=[99], **HEADS), ConfigError, r"heads\[0\] must be an int in 0\.\.3, got 99"),
    (dict(heads=[-1], **HEADS), ConfigError, r"heads\[0\] must be an int in 0\.\.3, got -1"),
    (dict(heads=[10**30], **HEADS), ConfigError, r"heads\[0\] must be an int in 0\.\.3, got 10{30}"),
    (dict(heads=[None], **HEADS), ConfigError, r"heads\[0\] must be an int in 0\.\.3, got None"),
    (dict(heads=[], **HEADS), ConfigError, r"heads must be a non-empty list"),
    (dict(heads=[0, 0], **HEADS), ConfigError, r"heads must not repeat an entry"),
    (dict(heads=[1]), ConfigError, r"heads=\[1\] is only read by head units \('h', 'h\.pos'\)"),
    (dict(positions=0), LocationError, r"positions must be a list of ints .*got 0"),
    (dict(positions=[1.5]), LocationError, r"positions must be a list of ints .*got \[1\.5\]"),
    (dict(positions=[None]), LocationError, r"positions must be a list of ints .*got \[None\]"),
    (dict(positions={0, 1}), LocationError, r"positions must be a list of ints .*got \{0, 1\}"),
    (dict(positions=[0, 0]), LocationError, r"positions: \[0, 0\] names a position twice"),
    (dict(positions=[4, -1]), LocationError, r"positions: \[4, -1\] names a position twice"),
    (dict(component=5), ConfigError, r"component must be a component name \(a str such as 'block_output'\), got 5"),
    (dict(tokens=["a", 1]), ConfigError, r"tokens must be a list of strings .*got \['a', 1\]"),
    (dict(tokens="abc"), ConfigError, r"tokens must be a list of strings .*got 'abc'"),
])
def test_sweep_arguments_are_checked(gpt2, ids, corr, sweep, kwargs, error, match):
    """Each was a raw IndexError/TypeError/AttributeError, or (heads on unit 'pos', repeated
    positions, bools) accepted silently."""
    before = _state(gpt2)
    with pytest.raises(error, match=match):
        sweep(gpt2, ids, METRIC, corrupted=corr, **kwargs)
    _assert_same(gpt2, before)


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("metric, error, match", [
    (5, ConfigError, r"metric must be a function of the model's outputs or 'kl_to_clean', got 5"),
    (None, ConfigError, r"metric must be a function .*got None"),
    (lambda: 0, ConfigError, r"metric <function .*> must take one argument \(the model's outputs\)"),
    (lambda o: 5, ShapeError, r"metric must return a 1-d floating-point tensor of one value per row \(2 rows\), got 5"),
    (lambda o: [1.0, 2.0], ShapeError, r"metric must return a 1-d floating-point tensor.*got \[1\.0, 2\.0\]"),
    (lambda o: torch.zeros(3), ShapeError, r"one value per row \(2 rows\), got a torch\.float32 tensor of shape \[3\]"),
    (lambda o: torch.zeros(2, 2), ShapeError, r"got a torch\.float32 tensor of shape \[2, 2\]"),
    (lambda o: torch.zeros(2, dtype=torch.long), ShapeError, r"got a torch\.int64 tensor of shape \[2\]"),
])
def test_sweep_metric_is_checked(gpt2, ids, corr, sweep, metric, error, match):
    before = _state(gpt2)
    with pytest.raises(error, match=match):
        sweep(gpt2, ids, metric, corrupted=corr)
    _assert_same(gpt2, before)


def test_attribution_needs_a_differentiable_metric(gpt2, ids, corr):
    with pytest.raises(ConfigError, match=r"attribution patching differentiates the metric, but its value has no gradient"):
        P.attribution_patching(gpt2, ids, lambda o: METRIC(o).detach(), corrupted=corr)


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("corrupted, error, match", [
    (torch.zeros(2, 5), ShapeError, r"corrupted\['input_ids'\] must be a \[batch, seq\] integer tensor.*float32"),
    ({"input_ids": torch.zeros(5, dtype=torch.long)}, ShapeError, r"corrupted\['input_ids'\] must be a \[batch, seq\].*1-d"),
    ({"input_ids": torch.full((2, 5), 9999)}, ShapeError, r"corrupted\['input_ids'\]: token id 9999 is outside .*0\.\.999"),
])
def test_sweep_inputs_are_checked(gpt2, ids, sweep, corrupted, error, match):
    with pytest.raises(error, match=match):
        sweep(gpt2, ids, METRIC, corrupted=corrupted)


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("noise, error, match", [
    (P.GaussianNoise([0], std=math.nan), ConfigError, r"GaussianNoise\.std must be a positive finite number, got nan"),
    (P.GaussianNoise([0], std=-1.0), ConfigError, r"GaussianNoise\.std must be a positive finite number, got -1\.0"),
    (P.GaussianNoise([0], std="big"), ConfigError, r"GaussianNoise\.std must be a positive finite number, got 'big'"),
    (P.GaussianNoise([0], std=True), ConfigError, r"GaussianNoise\.std must be a positive finite number, got True"),
    (P.GaussianNoise([0], std=1e39), ConfigError, r"GaussianNoise\.std must fit in float32"),
    (P.GaussianNoise([0], seed=-1), ConfigError, r"GaussianNoise\.seed must be a non-negative int, got -1"),
    (P.GaussianNoise([0], seed=1.5), ConfigError, r"GaussianNoise\.seed must be a non-negative int, got 1\.5"),
    (P.GaussianNoise([0], seed=True), ConfigError, r"GaussianNoise\.seed must be a non-negative int, got True"),
    (P.GaussianNoise([True]), LocationError, r"GaussianNoise\.positions must be a non-empty list of ints.*\[True\]"),
    (P.GaussianNoise([]), LocationError, r"GaussianNoise\.positions must be a non-empty list of ints.*got \[\]"),
    (P.GaussianNoise("ab"), LocationError, r"GaussianNoise\.positions must be a non-empty list.*got 'ab'"),
    (P.GaussianNoise([0, 0]), LocationError, r"GaussianNoise\.positions must not repeat an entry"),
    ("noise", ConfigError, r"noise must be a GaussianNoise\(positions, std, seed\), got 'noise'"),
])
def test_sweep_noise_is_checked(gpt2, ids, sweep, noise, error, match):
    """NaN, negative and bool std ran silently (NaN noise everywhere); a float or bool seed, a
    string std and a string noise escaped as raw RuntimeError/TypeError/AttributeError."""
    before = _state(gpt2)
    with pytest.raises(error, match=match):
        sweep(gpt2, ids, METRIC, noise=noise)
    _assert_same(gpt2, before)


@pytest.mark.parametrize("key, value, match", [
    ("max_rows", 0, r"max_rows must be a positive int or None, got 0"),
    ("max_rows", -1, r"max_rows must be a positive int or None, got -1"),
    ("max_rows", True, r"max_rows must be a positive int or None, got True"),
    ("max_rows", 1.5, r"max_rows must be a positive int or None, got 1\.5"),
    ("max_rows", "2", r"max_rows must be a positive int or None, got '2'"),
    ("max_rows", math.nan, r"max_rows must be a positive int or None, got nan"),
    ("max_rows", math.inf, r"max_rows must be a positive int or None, got inf"),
    ("memory_budget", 0, r"memory_budget \(bytes\) must be a positive finite number, got 0"),
    ("memory_budget", -1, r"memory_budget \(bytes\) must be a positive finite number, got -1"),
    ("memory_budget", True, r"memory_budget \(bytes\) must be a positive finite number, got True"),
    ("memory_budget", "1GB", r"memory_budget \(bytes\) must be a positive finite number, got '1GB'"),
    ("memory_budget", math.nan, r"memory_budget \(bytes\) must be a positive finite number, got nan"),
    ("memory_budget", math.inf, r"memory_budget \(bytes\) must be a positive finite number, got inf"),
    ("memory_budget", None, r"memory_budget \(bytes\) must be a positive finite number, got None"),
    ("progress", 1, r"progress must be True or False, got 1"),
    ("progress", None, r"progress must be True or False, got None"),
])
def test_sweep_budget_arguments_are_checked(gpt2, ids, corr, key, value, match):
    """max_rows 0, -1, True, 1.5 and '2' were coerced silently (int(), max(1, ...)); NaN and inf
    escaped as raw ValueError/OverflowError; memory budgets were never checked."""
    kw = {"progress": False, key: value}
    with pytest.raises(ConfigError, match=match):
        P.patching_sweep(gpt2, ids, METRIC, corrupted=corr, **kw)


# -- PatchingResult save / load / top ----------------------------------------------------------------
@pytest.fixture(scope="module")
def result(gpt2, ids, corr):
    return P.patching_sweep(gpt2, ids, METRIC, corrupted=corr, progress=False, layers=[0, 1], positions=[0, 2, 4])


def _saved(result, tmp_path, **doc_edits):
    folder = result.save(tmp_path / "r")
    doc = json.loads((folder / P.PATCHING_CONFIG).read_text())
    doc.update(doc_edits)
    (folder / P.PATCHING_CONFIG).write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("edits, match", [
    (dict(axes=["bogus", "position"]), r"'axes' must be one of \[\['layer', 'position'\].*got \['bogus', 'position'\]"),
    (dict(axes=["layer", "layer"]), r"'axes' must be one of .*got \['layer', 'layer'\]"),
    (dict(axes=["layer"]), r"'axes' must be one of .*got \['layer'\]"),
    (dict(labels={"layer": [0, 1], "position": ["a", "b", "c"]}), r"labels\['position'\]\[0\] must be a non-negative int, got 'a'"),
    (dict(labels={"layer": [0, 1.5], "position": [0, 2, 4]}), r"labels\['layer'\]\[1\] must be a non-negative int, got 1\.5"),
    (dict(labels={"layer": [0, True], "position": [0, 2, 4]}), r"labels\['layer'\]\[1\] must be a non-negative int, got True"),
    (dict(labels={"layer": [0, -1], "position": [0, 2, 4]}), r"labels\['layer'\]\[1\] must be a non-negative int, got -1"),
    (dict(labels={"layer": [0, 0], "position": [0, 2, 4]}), r"labels\['layer'\] must not repeat an entry"),
    (dict(labels={"layer": [0, 1], "position": [0, 2, 4], "extra": [1]}), r"'labels' must hold one list per axis"),
    (dict(direction="sideways"), r"'direction' 'sideways' is not accepted; accepted: 'denoising', 'noising'"),
    (dict(method="guess"), r"'method' 'guess' is not accepted; accepted: 'exact', 'attribution'"),
    (dict(component=""), r"'component' must be a non-empty component name, got ''"),
])
def test_load_refuses_malformed_fields(result, tmp_path, edits, match):
    """Each loaded silently before (labels of any type, any direction or method string)."""
    with pytest.raises(LoadError, match=match):
        P.PatchingResult.load(_saved(result, tmp_path, **edits))


@pytest.mark.parametrize("key, make, match", [
    ("per_example", lambda t: t.long(), r"'per_example' must be a floating-point tensor \(metric values\), got torch\.int64"),
    ("per_example", lambda t: t.bool(), r"'per_example' must be a floating-point tensor .*got torch\.bool"),
    ("clean", lambda t: t.long(), r"'clean' must be a floating-point tensor .*got torch\.int64"),
    ("per_example", lambda t: t[..., :0], r"'per_example' has shape \[2, 3, 0\].*batch dimension of at least 1"),
])
def test_load_refuses_non_float_or_empty_tensors(result, tmp_path, key, make, match):
    folder = _saved(result, tmp_path)
    tensors = {"per_example": result.per_example, "clean": result.clean, "corrupted": result.corrupted}
    tensors[key] = make(tensors[key]).contiguous()
    save_file(tensors, str(folder / P.PATCHING_WEIGHTS))
    doc = json.loads((folder / P.PATCHING_CONFIG).read_text())
    # the hash of the rewritten file, so that the tensors' own check is what refuses them
    doc["weights"]["sha256"] = "sha256:" + hashlib.sha256((folder / P.PATCHING_WEIGHTS).read_bytes()).hexdigest()
    (folder / P.PATCHING_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(LoadError, match=match):
        P.PatchingResult.load(folder)


@pytest.mark.parametrize("edits, match", [
    (dict(axes=("layer", 5)), r"PatchingResult\.save: 'axes' must be one of .*got \['layer', 5\]"),
    (dict(direction=5), r"PatchingResult\.save: 'direction' 5 is not accepted"),
    (dict(tokens=[1, 2]), r"PatchingResult\.save: 'tokens' must be a list of strings or null, got \[1, 2\]"),
    (dict(clean=[1.0, 2.0]), r"PatchingResult\.save: 'clean' must be a floating-point tensor .*got list"),
    (dict(per_example=torch.zeros(2, 3, 2).numpy()), r"'per_example' must be a floating-point tensor .*got ndarray"),
])
def test_save_refuses_malformed_results_before_writing(result, tmp_path, edits, match):
    import dataclasses
    bad = dataclasses.replace(result, **edits)
    with pytest.raises(ConfigError, match=match):
        bad.save(tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), r"top: k must be a positive int, got 0"), (dict(k=-1), r"top: k must be a positive int, got -1"),
    (dict(k=True), r"top: k must be a positive int, got True"), (dict(k=1.5), r"top: k must be a positive int, got 1\.5"),
    (dict(k=None), r"top: k must be a positive int, got None"),
    (dict(k=3, normalized=1), r"top: normalized must be True or False, got 1"),
    (dict(k=3, normalized=None), r"top: normalized must be True or False, got None"),
])
def test_top_arguments_are_checked(result, kwargs, match):
    """k=0 and -1 gave every cell but the last ones silently (a negative slice), 1.5 a raw TypeError."""
    with pytest.raises(ConfigError, match=match):
        result.top(**kwargs)


# -- interventions called directly: embed_dim narrower or wider than the units ---------------------
def _direct(kind, iv, base, source):
    return iv(base, source) if kind == "skip" else iv(base)


@pytest.mark.parametrize("kind", ["zero", "noise", "skip"])
def test_embed_dim_narrower_than_the_units_touches_only_its_prefix(kind):
    """zero, noise and skip edited every feature where vanilla, addition and collect take only
    the first embed_dim (pyvene's meaning of embed_dim on wider units)."""
    from pyvene_like.interventions import basic
    iv = {"zero": lambda: basic.ZeroIntervention(embed_dim=4),
          "noise": lambda: basic.NoiseIntervention(embed_dim=4, noise_level=1.0, seed=0),
          "skip": lambda: basic.SkipIntervention(embed_dim=4)}[kind]()
    base, source = torch.ones(2, 3, 8), torch.full((2, 3, 8), 5.0)
    out = _direct(kind, iv, base, source)
    assert torch.equal(out[..., 4:], base[..., 4:])
    assert not torch.equal(out[..., :4], base[..., :4])


@pytest.mark.parametrize("kind", ["zero", "noise", "skip"])
def test_embed_dim_wider_than_the_units_is_refused(kind):
    """zero, noise and skip ran on units narrower than embed_dim where the others refused them."""
    from pyvene_like.interventions import basic
    iv = {"zero": basic.ZeroIntervention, "noise": basic.NoiseIntervention, "skip": basic.SkipIntervention}[kind](embed_dim=16)
    with pytest.raises(ShapeError, match=r"units of width 8 are narrower than embed_dim=16"):
        _direct(kind, iv, torch.ones(2, 8), torch.ones(2, 8))


# -- CLI: malformed saved folders ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_ivs(tmp_path_factory, gpt2):
    import pyvene_like as pv
    folder = tmp_path_factory.mktemp("cli") / "ivs"
    pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="vanilla"), gpt2).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(weights=None), r"'weights' must be a JSON object, got None"),
    (lambda d: d["intervenable_config"].update(representations=[1]), r"each of 'representations' must be a JSON object, got 1"),
])
def test_cli_info_on_malformed_interventions_is_one_line(saved_ivs, tmp_path, capsys, edit, match):
    """Each escaped from `info` as a raw AttributeError traceback."""
    import shutil

    from pyvene_like.cli import main
    folder = tmp_path / "ivs"
    shutil.copytree(saved_ivs, folder)
    doc = json.loads((folder / "config.json").read_text())
    edit(doc)
    (folder / "config.json").write_text(json.dumps(doc))
    assert main(["info", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyvene-like: error: ")
    assert __import__("re").search(match, err[0])


@pytest.mark.parametrize("books", [None, 5])
def test_cli_info_on_malformed_codebooks_is_one_line(tmp_path, capsys, books):
    from pyvene_like.cli import main
    (tmp_path / "codebooks.json").write_text(json.dumps({"library": "pyvene_like", "codebooks": books}))
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'codebooks' must be a JSON list, got {books!r}" in err[0]


# -- app Workspace handlers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("datasets")
    from app_files import build

    from pyvene_like.app.workspace import Workspace
    top = tmp_path_factory.mktemp("ws")
    build(top / "served")
    return Workspace([top / "served"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(head=True), r"head must be one of the codebook's heads \[0, 1\] \(or None for all\), got True"),
    (dict(head=7), r"head must be one of the codebook's heads \[0, 1\].*got 7"),
    (dict(head=-1), r"head must be one of the codebook's heads.*got -1"),
    (dict(head=0.0), r"head must be one of the codebook's heads.*got 0\.0"),
    (dict(head=None, limit=-1), r"limit must be an int in 1\.\.1000000, got -1"),
    (dict(head=None, limit=0), r"limit must be an int in 1\.\.1000000, got 0"),
    (dict(head=None, limit=1.5), r"limit must be an int in 1\.\.1000000, got 1\.5"),
    (dict(head=None, limit="5"), r"limit must be an int in 1\.\.1000000, got '5'"),
])
def test_workspace_code_list_checks_head_and_limit(workspace, kwargs, match):
    """head=True matched head 1 and a head the codebook lacks gave an empty list (silently);
    limit=-1 dropped the last row, 1.5 and '5' escaped as raw TypeErrors."""
    book = workspace.codebooks("served/records")[0]["name"]
    head = kwargs.pop("head")
    with pytest.raises(ConfigError, match=match):
        workspace.code_list("served/records", book, head, **kwargs)


@pytest.mark.parametrize("call, match", [
    (lambda ws: ws.sae_summary("served/sae", "served/prompts/animals.txt", limit=-1), r"limit must be an int in 1\.\.1000000, got -1"),
    (lambda ws: ws.sae_summary("served/sae", "served/prompts/animals.txt", limit=True), r"limit must be an int in 1\.\.1000000, got True"),
    (lambda ws: ws.sae_feature("served/sae", "served/prompts/animals.txt", 0, top=-1), r"top must be an int in 1\.\.1000, got -1"),
    (lambda ws: ws.sae_feature("served/sae", "served/prompts/animals.txt", 0, top=2.5), r"top must be an int in 1\.\.1000, got 2\.5"),
])
def test_workspace_sae_limits_are_checked(workspace, call, match):
    with pytest.raises(ConfigError, match=match):
        call(workspace)


# -- SAE steering ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scores():
    from pyvene_like.sae import SAE
    from pyvene_like.sae import steering as S
    torch.manual_seed(0)
    sae = SAE(d_in=8, d_sae=16)
    g = torch.Generator().manual_seed(0)
    align = [torch.randn(4, 8, generator=g), torch.randn(3, 8, generator=g)]
    ref = [torch.randn(5, 8, generator=g), torch.randn(2, 8, generator=g)]
    return sae, align, ref, S.score_features(sae, align, ref)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="add", top_k=3, scale=math.nan), r"scale must be a finite number, got nan"),
    (dict(method="add", top_k=3, scale=math.inf), r"scale must be a finite number, got inf"),
    (dict(method="add", top_k=3, scale=True), r"scale must be a finite number, got True"),
    (dict(method="add", top_k=3, scale="x"), r"scale must be a finite number, got 'x'"),
    (dict(method="add", top_k=3, scale=None), r"scale must be a finite number, got None"),
    (dict(method="add", top_k=3, scale=1e308), r"scale must fit in float32"),
    (dict(method="swap", top_k=3, use_error_term=1), r"use_error_term must be True or False, got 1"),
    (dict(method="swap", top_k=3, use_error_term="yes"), r"use_error_term must be True or False, got 'yes'"),
])
def test_steering_kwargs_are_checked(scores, kwargs, match):
    """NaN/inf/True/1e308 scales gave NaN, inf or cast steering values silently; 'x' and None
    escaped as raw TypeErrors; use_error_term=1 or 'yes' was passed on as truthy."""
    with pytest.raises(ConfigError, match=match):
        scores[3].intervention_kwargs(**kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: torch.zeros(3, 8, dtype=torch.long), r"prompt 0 must be a floating-point tensor, got dtype torch\.int64"),
    (lambda: torch.zeros(3, 8, dtype=torch.bool), r"prompt 0 must be a floating-point tensor, got dtype torch\.bool"),
    (lambda: torch.zeros(3, 8, dtype=torch.complex64), r"prompt 0 must be a floating-point tensor, got dtype torch\.complex64"),
    (lambda: torch.full((3, 8), math.nan), r"prompt 0 must hold finite numbers"),
])
@pytest.mark.parametrize("fn", ["coverage", "reconstruction_error", "prompt_summaries"])
def test_sae_activations_must_be_finite_floats(scores, make, match, fn):
    from pyvene_like.sae import steering as S
    with pytest.raises(ShapeError, match=match):
        getattr(S, fn)(scores[0], [make()])


@pytest.mark.parametrize("distances, error, match", [
    ([math.nan, 1.0], ConfigError, r"ref_distances must hold finite numbers"),
    (["a", "b"], ConfigError, r"ref_distances must be a floating-point tensor .*got list"),
    ([True, False], ConfigError, r"ref_distances must be a floating-point tensor, got dtype torch\.bool"),
    (torch.tensor([1, 2]), ConfigError, r"ref_distances must be a floating-point tensor, got dtype torch\.int64"),
    ([-1.0, 2.0], ConfigError, r"ref_distances must be >= 0 \(distances\), got -1"),
    ([[1.0], [2.0]], ShapeError, r"ref_distances has shape \[2, 1\] for 2 reference prompts"),
])
def test_score_features_ref_distances_are_checked(scores, distances, error, match):
    from pyvene_like.sae import steering as S
    sae, align, ref, _ = scores
    with pytest.raises(error, match=match):
        S.score_features(sae, align, ref, method="distance", ref_distances=distances)


@pytest.mark.parametrize("a, match", [
    (None, r"ref_embeddings must be a floating-point tensor .*got NoneType"),
    (torch.zeros(2, 3, dtype=torch.long), r"ref_embeddings must be a floating-point tensor, got dtype torch\.int64"),
    (torch.full((2, 3), math.nan), r"ref_embeddings must hold finite numbers"),
])
def test_min_distances_embeddings_are_checked(a, match):
    from pyvene_like.sae import steering as S
    with pytest.raises(ShapeError, match=match):
        S.min_distances(a, torch.zeros(2, 3))


# -- low-rank rotation with index-list partition entries ------------------------------------------------
@pytest.mark.parametrize("partition, reach", [([[0]], None), ([[0, 2, 5]], 6), ([[2, 4], [0, 1]], 4), ([[1, 3], [0]], None)])
def test_low_rank_partition_reach_counts_every_entry(partition, reach):
    """An index-list entry ([[0]]) raised a raw IndexError (the check read entry[-1][1]); an
    unordered partition ([[2, 4], [0, 1]]) was checked by its last entry only and passed."""
    from pyvene_like.interventions.rotated import LowRankRotatedSpaceIntervention
    if reach is None:
        iv = LowRankRotatedSpaceIntervention(embed_dim=8, subspace_partition=partition, low_rank_dimension=3)
        assert iv.subspace_partition == partition
    else:
        with pytest.raises(ConfigError, match=rf"reaches dimension {reach} but the low-rank rotation has only "
                                              rf"low_rank_dimension=3"):
            LowRankRotatedSpaceIntervention(embed_dim=8, subspace_partition=partition, low_rank_dimension=3)


def test_perplexity_under_a_model_without_logits_names_what_it_needs():
    from transformers import BertConfig, BertModel

    enc = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=16)).eval()
    with pytest.raises(ConfigError, match=r"model must be a causal LM whose output has \.logits .*BertModel returned"):
        F.perplexity(enc, [(torch.tensor([[1, 2, 3, 4]]), 2)])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(library="other"), r"'library' must be \"pyvene_like\""),
    (lambda d: d.update(library_version=3), r"'library_version' a version string"),
    (lambda d: d.pop("weights"), r"'weights' must be \{\"file\": 'patching.safetensors', \"sha256\""),
    (lambda d: d["weights"].pop("sha256"), r"'weights' must be .*got \{'file': 'patching.safetensors'\}"),
    (lambda d: d["weights"].update(sha256="xyz"), r"'weights' must be .*'sha256': 'xyz'"),
    (lambda d: d["weights"].update(file="other.safetensors"), r"'weights' must be .*other.safetensors"),
])
def test_a_patching_folder_must_say_what_wrote_it_and_the_weights_hash(tmp_path, edit, match):
    res = P.PatchingResult(torch.zeros(2, 3, 1), ("layer", "position"), {"layer": [0, 1], "position": [0, 1, 2]},
                           torch.zeros(1), torch.zeros(1), "denoising", "block_output", "exact", None)
    folder = res.save(tmp_path / "r")
    P.PatchingResult.load(folder)  # as saved: loads
    doc = json.loads((folder / "patching.json").read_text())
    edit(doc)
    (folder / "patching.json").write_text(json.dumps(doc))
    with pytest.raises(LoadError, match=match):
        P.PatchingResult.load(folder)
