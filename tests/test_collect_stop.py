"""Collect-only calls (``IntervenableModel.collect``, ``collect_activations``) stop the base pass
right after the last site they read, and return what the full forward's Collect returns."""

from __future__ import annotations

import pytest
import torch
from conftest import make_gpt2

import pyvene_like as pv


def counting(model, modules):
    calls = {name: 0 for name in modules}

    def hook(name):
        def fn(*_):
            calls[name] += 1
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    return calls, handles


def later_modules(gpt2):
    return {"h2": gpt2.transformer.h[2], "h3": gpt2.transformer.h[3], "head": gpt2.lm_head}


def test_collect_equals_forward_and_skips_later_layers(gpt2, ids):
    base, _ = ids
    reps = [pv.RepresentationConfig(1, "block_output", intervention_type="collect"),
            pv.RepresentationConfig(0, "head_attention_value_output", "h.pos", intervention_type="collect")]
    im = pv.IntervenableModel(reps, gpt2)
    locs = {"base": [[[1, 3]] * 3, ([[0, 2]] * 3, [[1, 3]] * 3)]}
    with torch.no_grad():
        (_, want), _ = im({"input_ids": base}, unit_locations=locs)
        calls, handles = counting(gpt2, later_modules(gpt2))
        got = im.collect({"input_ids": base}, unit_locations=locs)
    for h in handles:
        h.remove()
    assert calls == {"h2": 0, "h3": 0, "head": 0}
    assert len(got) == 2
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    # the hooks of the call are gone, the user's (removed above) were never touched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in gpt2.modules())


def test_collect_sees_edits_made_before_its_site(gpt2, ids):
    base, src = ids
    reps = [pv.RepresentationConfig(0, "block_output"),  # vanilla interchange from the source
            pv.RepresentationConfig(2, "mlp_output", intervention_type="collect"),
            pv.RepresentationConfig(3, "block_output", intervention_type="zero")]
    im = pv.IntervenableModel(reps, gpt2)
    locs = {"sources->base": ([[[2]] * 3, None, None], [[[2]] * 3, [[4]] * 3, [[4]] * 3])}
    with torch.no_grad():
        (_, want), _ = im({"input_ids": base}, [{"input_ids": src}, None, None], locs)
        calls, handles = counting(gpt2, {"h3": gpt2.transformer.h[3], "head": gpt2.lm_head})
        got = im.collect({"input_ids": base}, [{"input_ids": src}, None, None], locs)
    for h in handles:
        h.remove()
    assert calls == {"h3": 0, "head": 0}
    assert torch.equal(got[0], want[0])


def test_collect_needs_a_collect_intervention(gpt2, ids):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    with pytest.raises(pv.ConfigError, match="collect: the config has no Collect intervention"):
        im.collect({"input_ids": ids[0]}, unit_locations={"base": 1})


def test_collect_activations_stops_at_its_last_site(ids):
    gpt2 = make_gpt2()  # not the session model: output_hidden_states makes transformers install hooks for good
    calls, handles = counting(gpt2, later_modules(gpt2))
    ds = pv.analysis.collect_activations(gpt2, {"input_ids": ids[0]}, [(0, "block_output"), (1, "mlp_output")],
                                positions=2, batch_size=2)
    for h in handles:
        h.remove()
    assert calls == {"h2": 0, "h3": 0, "head": 0}
    with torch.no_grad():
        out = gpt2(input_ids=ids[0], output_hidden_states=True)
    torch.testing.assert_close(torch.tensor(ds["L0.block_output"]), out.hidden_states[1][:, 2])
