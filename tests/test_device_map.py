"""A model loaded with accelerate's ``device_map`` (here on a CPU-only machine: layers kept on the
CPU, one block offloaded to disk) gives bit-identical interchange, Collect and generation to the
same model loaded plainly: interventions run on their site's execution device, and the pass
stops early through accelerate's hooks as it does without them."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import pyvene_like as pv

DEVICE_MAP = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
              "transformer.h.1": "disk", "transformer.h.2": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device_map")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=64, n_positions=32)).save_pretrained(
        tmp / "model")
    plain = GPT2LMHeadModel.from_pretrained(tmp / "model").eval()
    mapped = GPT2LMHeadModel.from_pretrained(tmp / "model", device_map=DEVICE_MAP,
                                             offload_folder=str(tmp / "offload")).eval()
    return plain, mapped


def _ids(seed, rows=2, length=7):
    return torch.randint(0, 64, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_the_mapped_model_is_dispatched_and_offloaded(models):
    _, mapped = models
    assert mapped.hf_device_map["transformer.h.1"] == "disk"
    assert next(mapped.transformer.h[1].parameters()).device.type == "meta"  # weights on disk, not in memory


@pytest.mark.parametrize("layer", [0, 1])  # a block in memory and the one on disk
def test_interchange_is_bit_identical(models, layer):
    base, source = {"input_ids": _ids(1)}, {"input_ids": _ids(2)}
    outs = []
    for model in models:
        torch.manual_seed(0)
        im = pv.IntervenableModel(pv.RepresentationConfig(layer, "block_output", intervention_type="rotated_space"),
                                  model)
        with torch.no_grad():
            outs.append(im(base, [source], {"sources->base": ([[[3, 4]] * 2], [[[5, 6]] * 2])})[1].logits)
    assert torch.equal(outs[0], outs[1])


def test_collect_is_bit_identical(models):
    reps = [pv.RepresentationConfig(1, "block_output", intervention_type="collect"),
            pv.RepresentationConfig(1, "head_attention_value_output", "h.pos", intervention_type="collect")]
    base = {"input_ids": _ids(3)}
    got = []
    for model in models:
        im = pv.IntervenableModel(pv.IntervenableConfig(reps), model)
        with torch.no_grad():
            early = im.collect(base, unit_locations={"base": [[[1, 5]] * 2, ([[0, 3]] * 2, [[1, 5]] * 2)]})
            out = im(base, unit_locations={"base": [[[1, 5]] * 2, ([[0, 3]] * 2, [[1, 5]] * 2)]}, return_dict=True)
        got.append((early, out.collected_activations, out.intervened_outputs.logits))
    (e0, c0, l0), (e1, c1, l1) = got
    assert all(torch.equal(a, b) for a, b in zip(e0 + c0, e1 + c1)) and torch.equal(l0, l1)
    assert all(torch.equal(a, b) for a, b in zip(e0, c0))  # the early stop reads what the full pass does


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_is_bit_identical(models, use_cache):
    ids = _ids(4, rows=1, length=5)
    vec = torch.randn(32, generator=torch.Generator().manual_seed(5))
    kw = dict(max_new_tokens=4, do_sample=False, use_cache=use_cache, return_dict_in_generate=True,
              output_logits=True)
    outs = []
    for model in models:
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), model)
        outs.append(im.generate({"input_ids": ids}, source_representations=vec, timesteps="all", **kw)[1])
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert all(torch.equal(a, b) for a, b in zip(outs[0].logits, outs[1].logits))
    assert not torch.equal(outs[0].sequences, models[0].generate(ids, max_new_tokens=4, do_sample=False))


def test_trainer_is_bit_identical_and_leaves_the_mapped_model_in_place(models):
    cols = {"input_ids": _ids(6, rows=16, length=6), "source_input_ids": _ids(7, rows=16, length=6)[:, None],
            "labels": torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(8))}
    weights = []
    for model in models:
        torch.manual_seed(0)
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"),
                                  model)
        before = im.interventions[0].rotate_layer.weight.detach().clone()
        pv.Trainer(im, cols, input_key="input_ids", unit_locations=5, batch_size=8, lr=1e-2, show_progress=False).train()
        weights.append(im.interventions[0].rotate_layer.weight.detach())
        assert not torch.equal(weights[-1], before)
    assert torch.equal(weights[0], weights[1])
    assert next(models[1].transformer.h[1].parameters()).device.type == "meta"
