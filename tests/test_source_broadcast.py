"""A batch-1 source (or batch-1 source_representations) against a batch-N base: every base
example reads the one source, as if the source were repeated N times. Checked against
hand-written hooks."""

import pytest
import torch

import pyvene_like as pv
from pyvene_like.errors import ShapeError
from tests.conftest import make_gpt2
from tests.reference import capture, run_with_edit


@pytest.fixture(scope="module")
def model():
    return make_gpt2(n_layer=2, n_embd=32)


def _ids(bsz, seed):
    return torch.randint(0, 1000, (bsz, 6), generator=torch.Generator().manual_seed(seed))


def _hand(model, layer, base, src, pos_base, pos_src):
    """Repeat the source activation and patch it at ``pos_base[b]`` from ``pos_src[b]``."""
    block = model.transformer.h[layer]
    acts = capture(model, block, "output", {"input_ids": src})  # [1, seq, d]

    def edit(x):
        for b in range(x.shape[0]):
            x[b, pos_base[b]] = acts[0, pos_src[b]]
        return x

    return run_with_edit(model, block, "output", {"input_ids": base}, edit).logits


def test_batch1_source_int_positions(model):
    base, src = _ids(4, 0), _ids(1, 1)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), model)
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": (2, 3)})
    ref = _hand(model, 1, base, src, [3] * 4, [2] * 4)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_batch1_source_per_example_positions(model):
    # Different source positions per example: the source is seen as a batch of 4 views.
    base, src = _ids(4, 2), _ids(1, 3)
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output"), model)
    ps, pb = [0, 1, 2, 5], [5, 4, 0, 1]
    _, out = im({"input_ids": base}, [{"input_ids": src}],
                {"sources->base": ([[[p] for p in ps]], [[[p] for p in pb]])})
    torch.testing.assert_close(out.logits, _hand(model, 0, base, src, pb, ps), atol=1e-5, rtol=1e-5)


def test_batch1_source_heads(model):
    base, src = _ids(3, 4), _ids(1, 5)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "head_attention_value_output", unit="h.pos"), model)
    loc = ([[1]], [[2]])  # head 1 at position 2, broadcast over the batch
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": ([loc], [loc])})
    proj = model.transformer.h[1].attn.c_proj
    acts = capture(model, proj, "input", {"input_ids": src})
    hd = 8

    def edit(x):
        x[:, 2, hd:2 * hd] = acts[0, 2, hd:2 * hd]
        return x

    ref = run_with_edit(model, proj, "input", {"input_ids": base}, edit).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_batch1_source_representations(model):
    base, src = _ids(4, 6), _ids(1, 7)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), model)
    reps = im.collect_source_representations([{"input_ids": src}], {"sources->base": 2})
    assert reps[0].shape[0] == 1
    _, out = im({"input_ids": base}, unit_locations={"sources->base": 2}, source_representations=reps)
    torch.testing.assert_close(out.logits, _hand(model, 1, base, src, [2] * 4, [2] * 4), atol=1e-5, rtol=1e-5)


def test_batch1_source_generate(model):
    base, src = _ids(3, 8), _ids(1, 9)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), model)
    _, one = im.generate({"input_ids": base}, [{"input_ids": src}], {"sources->base": 2},
                         max_new_tokens=3, do_sample=False)
    _, many = im.generate({"input_ids": base}, [{"input_ids": src.expand(3, -1)}], {"sources->base": 2},
                          max_new_tokens=3, do_sample=False)
    assert torch.equal(one, many)


def test_other_batch_sizes_still_refused(model):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), model)
    with pytest.raises(ShapeError, match=r"sources\[0\] has batch size 2 but base has 3; .*a batch of 1"):
        im({"input_ids": _ids(3, 0)}, [{"input_ids": _ids(2, 1)}], {"sources->base": 1})


def test_batch1_source_representations_generate(model):
    base = _ids(3, 10)
    vec = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(0))
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), model)
    kw = dict(unit_locations={"base": 2}, max_new_tokens=3, do_sample=False)
    _, one = im.generate({"input_ids": base}, source_representations=vec, **kw)
    _, many = im.generate({"input_ids": base}, source_representations=vec.expand(3, 1, 32), **kw)
    assert torch.equal(one, many)


def test_batch1_sources_serial_mode(model):
    base, s0, s1 = _ids(3, 11), _ids(1, 12), _ids(1, 13)
    cfg = pv.IntervenableConfig([pv.RepresentationConfig(0, "block_output"), pv.RepresentationConfig(1, "block_output")],
                                mode="serial")
    im = pv.IntervenableModel(cfg, model)
    locs = {"source_0->source_1": 2, "source_1->base": 3}
    _, one = im({"input_ids": base}, [{"input_ids": s0}, {"input_ids": s1}], locs)
    _, many = im({"input_ids": base}, [{"input_ids": s0.repeat(3, 1)}, {"input_ids": s1.repeat(3, 1)}], locs)
    torch.testing.assert_close(one.logits, many.logits)
