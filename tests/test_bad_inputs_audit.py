"""Regressions found by an independent audit of issue 13 (a random fuzz of the public API,
classifying every outcome as a correct result, a library error naming the value, a raw
Python/torch error, a silent acceptance, or a changed model). Each test failed before its fix.
"""

from __future__ import annotations

import json
import math
import os
import re

import datasets
import pytest
import torch
from torch import nn

import pyvene_like as pv
from pyvene_like import codebook as cb
from pyvene_like.errors import ConfigError, LoadError, LocationError, PyveneLikeWarning, ShapeError
from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def gpt2():
    return build_tiny_model("gpt2")


def _hooks(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


# -- unit locations ------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, shown", [
    ([[math.nan, math.nan]], "nan"),          # was a raw RuntimeError (int64 overflow) in torch.tensor
    ([[1.5, 2]], "1.5"),                      # was silently truncated to position 1
    ([[torch.tensor(0.5), 1]], "tensor(0.5"),  # was silently truncated to position 0
])
def test_rows_that_are_not_lists_of_ints_are_location_errors(gpt2, rows, shown):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), gpt2)
    base = {"input_ids": torch.randint(0, 100, (2, 6))}
    with pytest.raises(LocationError, match=f"indices must be ints.*{re.escape(shown)}"):
        im(base, unit_locations={"base": rows})


def test_a_zero_dim_tensor_among_head_rows_is_read_as_an_int(gpt2):
    # [tensor(1), 1] as heads was a raw "len() of a 0-d tensor" TypeError while building the error
    im = pv.IntervenableModel(pv.RepresentationConfig(
        1, "head_attention_value_output", unit="h.pos", intervention_type="collect"), gpt2)
    base = {"input_ids": torch.randint(0, 100, (2, 6))}
    with torch.no_grad():
        got = im.collect(base, unit_locations={"base": [[[torch.tensor(1), 1], [[0], [0]]]]})
        want = im.collect(base, unit_locations={"base": [[[1, 1], [[0], [0]]]]})
    assert torch.equal(got[0], want[0])


# -- configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "{", "\xff", 3])
def test_from_json_with_bad_text_is_a_config_error(text):
    with pytest.raises(ConfigError, match="from_json"):  # was a raw JSONDecodeError / TypeError
        pv.IntervenableConfig.from_json(text)


# -- save / load paths ---------------------------------------------------------------------------
def test_save_pretrained_to_the_empty_path_writes_nothing(gpt2, tmp_path, monkeypatch):
    # '' meant the current directory: config, weights and a model card overwriting its README.md
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("my project")
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"), gpt2)
    with pytest.raises(ConfigError, match="save_directory must be a folder path, got the empty string"):
        im.save_pretrained("")
    assert sorted(os.listdir(tmp_path)) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "my project"


@pytest.mark.parametrize("path", [None, 1, b"dir"])
def test_save_pretrained_to_a_non_path_is_a_config_error(gpt2, path):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"), gpt2)
    with pytest.raises(ConfigError, match=f"save_directory must be a folder path .*got {path!r}"):
        im.save_pretrained(path)  # was a raw TypeError from pathlib


def test_save_pretrained_where_no_folder_can_be_made_is_a_config_error(gpt2, tmp_path):
    (tmp_path / "file").write_text("x")
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"), gpt2)
    with pytest.raises(ConfigError, match="cannot create the folder .*file/sub"):
        im.save_pretrained(tmp_path / "file" / "sub")  # was a raw NotADirectoryError


def test_save_pretrained_keeps_a_readme_it_did_not_write(gpt2, tmp_path):
    (tmp_path / "README.md").write_text("# my project\n")
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"), gpt2)
    with pytest.warns(PyveneLikeWarning, match="not a pyvene_like model card; it was kept"):
        im.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my project\n"
    pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2)  # the save itself is complete
    # a card this library wrote is replaced without a word
    other = tmp_path / "again"
    im.save_pretrained(other)
    im.save_pretrained(other)
    assert "library_name: pyvene_like" in (other / "README.md").read_text()


@pytest.mark.parametrize("path", ["", "   "])
def test_from_pretrained_of_the_empty_path_is_a_config_error(gpt2, path):
    with pytest.raises(ConfigError, match="path_or_repo_id must be a folder path, got the empty string"):
        pv.IntervenableModel.from_pretrained(path, model=gpt2)


@pytest.mark.parametrize("path", [None, 1, ""])
def test_code_records_load_from_a_non_path_is_a_load_error(path):
    with pytest.raises(LoadError, match=f"load_from_disk: path must be a folder path.*{path!r}"):
        cb.CodeRecords.load_from_disk(path)  # None / 1 were raw TypeErrors


# -- codebooks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [1.5, -1, 0, "x", {"sha256": 3}])
def test_load_codebooks_with_a_bad_weights_record_is_a_load_error_and_leaves_the_model(tmp_path, weights):
    src = build_tiny_model("gpt2")
    cb.wrap_codebook(src, ["block_output"], num_codes=8, k=2, layers=[1], seed=0)
    cb.save_codebooks(src, tmp_path)
    doc = json.loads((tmp_path / "codebooks.json").read_text())
    doc["weights"] = weights  # 1.5 / -1 were raw AttributeErrors; 0 skipped the digest check
    (tmp_path / "codebooks.json").write_text(json.dumps(doc))
    target = build_tiny_model("gpt2")
    hooks = _hooks(target)
    with pytest.raises(LoadError, match=f"field 'weights' must be an object.*{weights!r}"):
        cb.load_codebooks(target, tmp_path)
    assert not hasattr(target, "codebooks") and _hooks(target) == hooks


@pytest.mark.parametrize("kwargs, match", [
    ({"layer_norm": "no"}, "layer_norm must be True or False, got 'no'"),  # was read as True
    ({"seed": "x"}, "seed must be .*got 'x'"),                               # raw RuntimeError
    ({"seed": 2**70}, "seed must be .*got 1180591620717411303424"),          # raw RuntimeError
])
def test_wrap_codebook_bad_settings_are_config_errors_and_leave_the_model(kwargs, match):
    model = build_tiny_model("gpt2")
    hooks = _hooks(model)
    with pytest.raises(ConfigError, match=match):
        cb.wrap_codebook(model, ["block_output"], num_codes=8, k=2, layers=[1], **kwargs)
    assert not hasattr(model, "codebooks") and _hooks(model) == hooks


@pytest.mark.parametrize("kwargs, match", [
    ({"layer_norm": "no"}, "layer_norm must be True or False, got 'no'"),
    ({"eps": math.nan}, "eps must be a positive finite number, got nan"),
    ({"eps": 0}, "eps must be a positive finite number, got 0"),
])
def test_codebook_layer_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cb.CodebookLayer(8, 4, 2, **kwargs)


# -- evaluate and Trainer on malformed data ------------------------------------------------------
class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        for layer in self.h:
            x = torch.relu(layer(x))
        return self.out(x)


@pytest.fixture()
def das():
    torch.manual_seed(0)
    mlp = _MLP().eval()
    mlp.requires_grad_(False)
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "h[{layer}].output", intervention_type="rotated_space"), mlp)
    cols = {"input_ids": torch.randn(8, 8).tolist(), "source_input_ids": torch.randn(8, 1, 8).tolist(),
            "labels": [0, 1] * 4}
    return im, cols


def _ds(cols, **change):
    return datasets.Dataset.from_dict({**cols, **change})


@pytest.mark.parametrize("change, error, match", [
    ({"labels": [0, 1, 2, 5] * 2}, ShapeError, "'labels' holds 5, but the model gives 2 classes"),  # was silent
    ({"labels": [None] * 8}, ShapeError, "column 'labels' is not numeric"),                         # raw AttributeError
    ({"labels": [True, False] * 4}, ShapeError, r"'labels' has shape \(8,\) \(torch.bool\)"),
    ({"input_ids": [[math.nan] * 8] * 8}, ShapeError, "'input_ids' holds NaN or inf .first at row 0"),  # was silent
    ({"input_ids": [["a"] * 8] * 8}, ShapeError, "column 'input_ids' is not numeric"),               # raw AttributeError
])
def test_evaluate_and_trainer_refuse_malformed_data(das, change, error, match):
    im, cols = das
    ds = _ds(cols, **change)
    flags = [p.requires_grad for p in im.model.parameters()]
    with pytest.raises(error, match=match):
        pv.evaluate(im, ds)
    if "'labels' holds 5" not in match:  # the Trainer checks the range against its first logits
        with pytest.raises(error, match=match):
            pv.Trainer(im, ds, epochs=1, batch_size=4, show_progress=False)
    assert [p.requires_grad for p in im.model.parameters()] == flags and not im.model.training


def test_evaluate_on_an_empty_dataset_is_a_config_error(das):
    im, cols = das
    with pytest.raises(ConfigError, match="dataset is empty"):  # was a raw torch.cat ValueError
        pv.evaluate(im, datasets.Dataset.from_dict({k: [] for k in cols}))


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),       # raw ValueError from range()
    ({"batch_size": 1.5}, "batch_size must be a positive int, got 1.5"),   # raw TypeError
    ({"batch_size": True}, "batch_size must be a positive int, got True"),  # silently 1
    ({"factual": "no"}, "factual must be True or False, got 'no'"),
    ({"input_key": 5}, "input_key must be None .* got 5"),                 # raw TypeError (keywords must be strings)
])
def test_evaluate_bad_arguments(das, kwargs, match):
    im, cols = das
    with pytest.raises(ConfigError, match=match):
        pv.evaluate(im, _ds(cols), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": "x"}, "seed must be .*got 'x'"),         # raw RuntimeError from manual_seed
    ({"seed": -1}, "seed must be .*got -1"),
    ({"seed": 2**62}, "seed must be .*got 4611686018427387904"),  # seed * 100_003 overflowed later
    ({"show_progress": "no"}, "show_progress must be True or False"),
    ({"train_model": 1}, "train_model must be True or False, got 1"),
    ({"early_stopping_patience": 0}, "early_stopping_patience must be a positive int or None"),
    ({"early_stopping_min_delta": math.nan}, "early_stopping_min_delta must be a non-negative finite number"),
    ({"checkpoint_dir": 1}, "checkpoint_dir must be a folder path .*got 1"),  # raw TypeError from pathlib
])
def test_trainer_bad_settings_leave_the_model(das, kwargs, match):
    im, cols = das
    flags = [p.requires_grad for p in im.model.parameters()]
    with pytest.raises(ConfigError, match=match):
        pv.Trainer(im, _ds(cols), eval_dataset=_ds(cols), epochs=1, batch_size=4, **kwargs)
    assert [p.requires_grad for p in im.model.parameters()] == flags


# -- command line --------------------------------------------------------------------------------
def test_python_dash_m_runs_the_command_line():
    # the package had no __main__: `python -m pyvene_like ...` failed with "No module named
    # pyvene_like.__main__" whatever the arguments
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    ok = subprocess.run([sys.executable, "-m", "pyvene_like", "version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.strip() == pv.__version__
    bad = subprocess.run([sys.executable, "-m", "pyvene_like", "sites", "/nonexistent/model"],
                         capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("pyvene-like: error: sites: cannot load a model from '/nonexistent/model'")


# -- analysis and causal-model data --------------------------------------------------------------
def test_find_heads_leaves_the_model_with_the_hooks_it_had():
    # transformers installs output-capturing forward hooks, for good, the first time a model is
    # called with output_attentions=True: find_heads left 4 hooks on a 2-layer GPT-2
    model = build_tiny_model("gpt2")
    mine = model.transformer.h[0].register_forward_hook(lambda *args: None)
    hooks = _hooks(model)
    ids = {"input_ids": torch.randint(0, 100, (2, 6))}
    first = pv.analysis.find_heads(model, ids, 5, 0, 0.0)
    assert _hooks(model) == hooks and not hasattr(model, "_output_capturing_hooks_installed")
    assert pv.analysis.find_heads(model, ids, 5, 0, 0.0) == first  # and the next call sees the same
    assert mine.id in model.transformer.h[0]._forward_hooks


def test_attention_patterns_of_a_non_module_is_a_config_error():
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module, got NoneType"):
        pv.analysis.find_heads(None, torch.zeros(1, 3, dtype=torch.long), 2, 0)  # raw TypeError


@pytest.mark.parametrize("kwargs, match", [
    ({"embed_dim": "x"}, "embed_dim must be a positive int, got 'x'"),  # accepted; failed at sampling
    ({"embed_dim": 1.5}, "embed_dim must be a positive int, got 1.5"),
    ({"low": math.nan}, "low must be a finite number, got nan"),        # silently NaN inputs
    ({"low": 2.0}, "low must be below high, got low=2.0, high=1.0"),    # silently inverted range
])
def test_hierarchical_equality_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pv.hierarchical_equality(**kwargs)


@pytest.mark.parametrize("seed", [1.5, True, -1, b"1", "x"])
def test_dataset_seeds_are_ints(seed):
    # int(seed) read 1.5 as 1, True as 1 and b'1' as 1; 'x' was a raw ValueError
    causal = pv.hierarchical_equality()
    with pytest.raises(ConfigError, match=f"seed .*got {re.escape(repr(seed))}"):
        pv.generate_factual_dataset(causal, 4, seed=seed)
    with pytest.raises(ConfigError, match=f"seed .*got {re.escape(repr(seed))}"):
        pv.generate_counterfactual_dataset(causal, 4, {0: ["WX"]}, seed=seed)


@pytest.mark.parametrize("model", [None, "hierarchical_equality", nn.Linear(2, 2)])
def test_dataset_generators_need_a_causal_model(model):
    with pytest.raises(ConfigError, match="expected a pyvene_like CausalModel"):  # raw AttributeErrors
        pv.generate_factual_dataset(model, 4)
    with pytest.raises(ConfigError, match="expected a pyvene_like CausalModel"):
        pv.generate_counterfactual_dataset(model, 4, {0: ["WX"]})


@pytest.mark.parametrize("sites", [None, 1.5, -1, True])
def test_collect_activations_sites_of_the_wrong_kind(gpt2, sites):
    with pytest.raises(ConfigError, match=f"sites must be .*got {sites!r}"):  # raw "not iterable"
        pv.analysis.collect_activations(gpt2, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, sites)


@pytest.mark.parametrize("positions, error, match", [
    (1.5, ConfigError, "positions must be an int, 'all', a word, or one entry per example .*got 1.5"),  # raw TypeError
    (None, ConfigError, "positions must be an int, .*got None"),
    (10**30, LocationError, "positions 1000000000000000000000000000000 is out of range"),  # raw overflow
    ([1.5, 2], ConfigError, "positions of example 0 must be an int or a non-empty list of ints, got 1.5"),
])
def test_collect_activations_positions(gpt2, positions, error, match):
    with pytest.raises(error, match=match):
        pv.analysis.collect_activations(gpt2, {"input_ids": torch.zeros(2, 3, dtype=torch.long)},
                                        (1, "block_output"), positions=positions)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"query_positions": True}, ConfigError, "query_positions must be an int or one int per example .*got True"),  # read as 1
    ({"key_positions": [0.5, 0]}, ConfigError, r"key_positions must be .*got \[0.5, 0\]"),  # truncated to 0
    ({"threshold": True}, ConfigError, "threshold must be a finite number, got True"),     # read as 1.0
    ({"ignore_first": "no"}, ConfigError, "ignore_first must be True or False, got 'no'"),
    ({"inputs": [[1, 2]]}, ShapeError, r"inputs must be .*got \[\[1, 2\]\]"),            # raw AttributeError in GPT-2
])
def test_find_heads_arguments(kwargs, error, match):
    model = build_tiny_model("gpt2")
    args = {"inputs": torch.zeros(2, 4, dtype=torch.long), "query_positions": 3, "key_positions": 0, **kwargs}
    with pytest.raises(error, match=match):
        pv.analysis.find_heads(model, **args)


@pytest.mark.parametrize("seed", [1.5, -1, None, 2**32])
def test_compat_set_seed(seed):
    with pytest.raises(ConfigError, match=f"set_seed: seed must be an int in 0..4294967295, got {seed!r}"):
        pv.set_seed(seed)  # raw NumPy / random errors


@pytest.mark.parametrize("kwargs, error, match", [
    ({"embed": None}, ShapeError, "embed must be a floating-point tensor .*got None"),  # raw AttributeError
    ({"embed": torch.randn(2, 7)}, ShapeError, r"embed must be .*\[2, 7\]"),           # raw matmul error
    ({"log": "no"}, ConfigError, "log must be True or False, got 'no'"),                  # read as True
    ({"logits": 1}, ConfigError, "logits must be True or False, got 1"),
])
def test_compat_embed_to_distrib(gpt2, kwargs, error, match):
    args = {"embed": torch.randn(2, gpt2.config.n_embd), **kwargs}
    with pytest.raises(error, match=match):
        pv.embed_to_distrib(gpt2, **args)


def test_counterfactual_ids_entries_and_sizes_past_int64():
    causal = pv.hierarchical_equality()
    with pytest.raises(ConfigError, match=r"intervention_ids\[0\]: expected a variable name or a list of them, got 1"):
        pv.generate_counterfactual_dataset(causal, 4, [1])  # raw "'int' object is not iterable"
    with pytest.raises(ConfigError, match="size: expected a positive int that fits in int64"):
        pv.generate_factual_dataset(causal, 10**30)  # raw overflow in torch.rand
    with pytest.raises(ConfigError, match="SAE d_in must be a positive int that fits in int64"):
        pv.SAE(10**30, 8)  # raw overflow in torch.zeros


# -- generate ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("num_beams", 0), ("num_return_sequences", 0), ("num_beams", "x"),
                                        ("num_beams", 1.5)])
def test_generate_row_counts_are_positive_ints(gpt2, key, value):
    # 0 was a raw ZeroDivisionError inside HF generate; 'x' a raw TypeError comparing with 1
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), gpt2)
    base = {"input_ids": torch.randint(1, 100, (2, 4))}
    hooks = _hooks(gpt2)
    with pytest.raises(ConfigError, match=f"generate: {key} must be a positive int, got {value!r}"):
        im.generate(base, max_new_tokens=2, **{key: value})
    assert _hooks(gpt2) == hooks


@pytest.mark.parametrize("name", ["", "   "])
def test_sae_hook_name_may_not_be_blank(name):
    # A blank hook name was stored and written to cfg.json, naming no hook at all.
    with pytest.raises(ConfigError, match=r"hook_name must be a string or None, got '\s*' \(a blank name"):
        pv.sae.SAE(d_in=4, d_sae=8, hook_name=name)


# -- errors raised inside the user's model --------------------------------------------------------
def _tiny_lm():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=16, vocab_size=50)).eval()


@pytest.mark.parametrize("bad, shown", [(50, "50"), (10**6, "1000000"), (-3, "-3")])
def test_token_ids_outside_the_vocabulary_name_the_input_not_torch_internals(bad, shown):
    model = _tiny_lm()
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="zero"), model)
    ids = torch.tensor([[1, 2, bad, 4]])
    match = rf"input_ids: token id {shown} is outside the model's vocabulary of 50 embeddings \(accepted: 0\.\.49\)"
    with pytest.raises(pv.ShapeError, match=match) as info:
        im({"input_ids": ids}, unit_locations={"base": 1})
    assert isinstance(info.value.__cause__, IndexError)  # the model's own error stays chained
    with pytest.raises(pv.ShapeError, match=match):
        im.generate({"input_ids": ids}, unit_locations={"base": 1}, max_new_tokens=2)
    with pytest.raises(pv.ShapeError, match=match):
        pv.IntervenableModel(pv.RepresentationConfig(0, "block_output"), model)(
            {"input_ids": torch.tensor([[1, 2, 3, 4]])}, [{"input_ids": ids}], {"sources->base": 1})


def test_an_error_of_the_model_itself_is_not_relabelled():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

        def forward(self, x):
            raise RuntimeError("my model is broken")

    im = pv.IntervenableModel({"component": "layer.output", "intervention_type": "zero"}, Broken())
    with pytest.raises(RuntimeError, match="my model is broken"):
        im(torch.zeros(1, 2, 4), unit_locations={"base": 0})
