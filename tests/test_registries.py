"""The generic registry, the SAE format registry, and the two modes of the one collect_activations."""

from __future__ import annotations

import pytest
import torch
from conftest import make_gpt2

import pyvene_like as pv
from pyvene_like.analysis import collect_activations
from pyvene_like.errors import ConfigError, LoadError
from pyvene_like.registry import INTERVENTIONS, Registry
from pyvene_like.sae import SAE, SAE_FORMATS, load_sae, register_sae_format


# -- Registry ------------------------------------------------------------------------------------
def test_registry_names_aliases_checks_and_lookup_errors():
    seen = []
    reg = Registry("widget", "widget_type", check=lambda name, obj: seen.append(name))
    reg.add("alpha", 1, "a")
    assert reg.register("beta")(2) == 2
    assert reg.get("a") == 1 and reg.primary_name("a") == "alpha" and "beta" in reg and [] not in reg
    assert reg.names() == ["a", "alpha", "beta"] and list(reg) == reg.names() and len(reg) == 3
    assert seen == ["alpha", "beta"]
    with pytest.raises(ConfigError, match=r"widget_type 'alpah' is not a registered widget\. Accepted names: 'a', "
                                          r"'alpha', 'beta'\. Did you mean 'alpha'\?"):
        reg.get("alpah")
    with pytest.raises(ConfigError, match=r"widget name 'alpha' is already registered to 1; choose another name for 3"):
        reg.add("alpha", 3)
    reg.add("alpha", 1)  # the same object again is fine
    reg.add("gamma", 5, "g")
    assert reg.remove("g") == 5 and "gamma" not in reg and "g" not in reg
    with pytest.raises(TypeError, match="widget name must be a non-empty string, got ''"):
        reg.add("", 4)

    def no_big(name, obj):
        if obj > 1:
            raise TypeError(f"{name}: too big")

    with pytest.raises(TypeError, match="beta: too big"):  # a check installed later runs over what is there
        reg.set_check(no_big)
    ordered = Registry("format", "format", sort_names=False, unknown="{field} {value!r}? accepted: {accepted}")
    ordered.add("zeta", 1)
    ordered.add("eta", 2)
    with pytest.raises(ConfigError, match=r"^format 'x'\? accepted: 'zeta', 'eta'$"):
        ordered.get("x")


def test_intervention_registry_is_a_registry_with_the_interventions_check():
    assert pv.get_intervention_class("interchange") is pv.VanillaIntervention
    assert INTERVENTIONS.primary_name("code") == "codebook"
    assert pv.registered_interventions() == INTERVENTIONS.as_dict()
    assert {"sae_swap", "sae_steer", "codebook"} <= set(INTERVENTIONS)
    with pytest.raises(TypeError, match=r"register_intervention\('odd'\): Odd.forward must take \(self, base"):
        @pv.register_intervention("odd")
        class Odd(pv.Intervention):
            def forward(self, x):
                return x


# -- SAE formats -----------------------------------------------------------------------------------
def test_a_new_sae_format_is_one_decorated_loader(tmp_path):
    (tmp_path / "tiny.json").write_text("{}")
    calls = []

    @register_sae_format("tiny_test_format", detect=lambda src, opts: src.has("tiny.json"), clue="'tiny.json' (tiny)")
    def load_tiny(src, opts):
        calls.append((src.fetch("tiny.json").name, opts.dtype))
        return SAE(4, 8)

    try:
        sae = load_sae(tmp_path)
        assert isinstance(sae, SAE) and calls == [("tiny.json", None)] and not sae.training
        load_sae(tmp_path, format="tiny_test_format", dtype="float32")
        assert calls[-1] == ("tiny.json", "float32")
        (tmp_path / "empty").mkdir()
        with pytest.raises(LoadError, match=r"cannot tell the SAE format of .*empty: it shows none of an OpenAI .pt "
                                            r"file .*'cfg.json' \(SAELens\), 'params.npz' \(Gemma Scope\), "
                                            r"'tiny.json' \(tiny\); give format= one of 'saelens', 'gemma_scope', "
                                            r"'openai', 'tiny_test_format'"):
            load_sae(tmp_path / "empty")
        with pytest.raises(ConfigError, match="SAE format name 'saelens' is already registered"):
            register_sae_format("saelens")(load_tiny)
    finally:  # leave the shared registry as it was
        assert SAE_FORMATS.remove("tiny_test_format").load is load_tiny
    assert list(pv.sae.FORMATS) == ["saelens", "gemma_scope", "openai"]


# -- collect_activations: several positions to Arrow, every token in memory ------------------------
def test_collect_several_positions_per_example_to_arrow(tmp_path):
    model = make_gpt2()
    x = {"input_ids": torch.randint(0, 50, (3, 7))}
    pos = [[1, 4], 6, [0, 2, 5]]
    ds = collect_activations(model, x, [(1, "block_output"), (0, "head_attention_value_output", [0, 2])],
                             positions=pos, labels=[0, 1, 0], columns={"tag": ["a", "b", "c"]}, batch_size=2,
                             output_dir=tmp_path)
    assert ds["example"] == [0, 0, 1, 2, 2, 2] and ds["position"] == [1, 4, 6, 0, 2, 5]
    assert ds["label"] == [0, 0, 1, 0, 0, 0] and ds["tag"] == ["a", "a", "b", "c", "c", "c"]
    meta = pv.analysis.activation_metadata(ds)
    assert meta["num_examples"] == 3 and meta["num_rows"] == 6
    first = collect_activations(model, x, [(1, "block_output"), (0, "head_attention_value_output", [0, 2])],
                                positions=[p[0] if isinstance(p, list) else p for p in pos], batch_size=3)
    t, t1 = ds.with_format("torch")[:], first.with_format("torch")[:]
    for col in ("L1.block_output", "L0.head_attention_value_output.H2"):
        torch.testing.assert_close(t[col][[0, 2, 3]], t1[col], atol=0, rtol=0)
    hs = model(**x, output_hidden_states=True).hidden_states[2]
    rows = torch.tensor(ds["example"])
    torch.testing.assert_close(t["L1.block_output"], hs[rows, torch.tensor(ds["position"])], atol=1e-5, rtol=1e-5)


def test_collect_every_token_in_memory_is_the_sae_collector():
    model = make_gpt2()
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9, 3]]
    acts = collect_activations(model, prompts, [(1, "block_output"), (1, "head_attention_value_output", [1])],
                               positions="all", batch_size=2, skip_first=1)
    assert sorted(acts) == ["L1.block_output", "L1.head_attention_value_output.H1"]
    assert [a.shape[0] for a in acts["L1.block_output"]] == [2, 5, 1]
    sae_acts = pv.sae.prompt_activations(pv.IntervenableModel(pv.RepresentationConfig(0), model), prompts, 1,
                                          batch_size=2, skip_first=1)
    for a, b in zip(acts["L1.block_output"], sae_acts):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="labels, output_dir only apply to the Arrow dataset"):
        collect_activations(model, prompts, (1, "block_output"), positions="all", labels=[0, 1, 2], output_dir="x")
    with pytest.raises(ConfigError, match="skip_first and max_length apply to positions='all'"):
        collect_activations(model, {"input_ids": torch.zeros(2, 3, dtype=torch.long)}, (1, "block_output"), skip_first=1)
    with pytest.raises(ConfigError, match="prompt 2 has 2 tokens, none left after skip_first=2"):
        collect_activations(model, prompts, (1, "block_output"), positions="all", skip_first=2)
