"""The wrapper as an ordinary torch module: inside larger modules, state dicts, dtypes, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_gpt2
from torch import nn

import pyvene_like as pv


class ModelWithIntervenables(nn.Module):
    """pyvene's README pattern: an intervenable model feeding a downstream head."""

    def __init__(self, gpt2, n_classes=3):
        super().__init__()
        rep = pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space")
        self.intervenable = pv.IntervenableModel(rep, gpt2)
        self.intervenable.disable_model_gradients()
        self.head = nn.Linear(gpt2.config.vocab_size, n_classes)

    def forward(self, base, source):
        _, out = self.intervenable(base, [source], {"sources->base": 3})
        return self.head(out.logits[:, -1])


def _inputs(seed=0, bsz=2, seq=6):
    g = torch.Generator().manual_seed(seed)
    return ({"input_ids": torch.randint(0, 100, (bsz, seq), generator=g)},
            {"input_ids": torch.randint(0, 100, (bsz, seq), generator=g)})


def test_gradients_reach_downstream_layers_and_interventions():
    torch.manual_seed(0)
    outer = ModelWithIntervenables(make_gpt2())
    base, source = _inputs()
    loss = F.cross_entropy(outer(base, source), torch.tensor([0, 2]))
    loss.backward()
    assert outer.head.weight.grad is not None and outer.head.weight.grad.abs().sum() > 0
    rot = [p for p in outer.intervenable.interventions.parameters() if p.requires_grad]
    assert rot and all(p.grad is not None and p.grad.abs().sum() > 0 for p in rot)
    assert all(p.grad is None for p in outer.intervenable.model.parameters())
    # One optimiser over the whole pipeline changes both the head and the rotation.
    opt = torch.optim.SGD([p for p in outer.parameters() if p.requires_grad], lr=0.1)
    w_rot = outer.intervenable.interventions[0].rotate_layer.weight.detach().clone()
    opt.step()
    assert not torch.equal(outer.intervenable.interventions[0].rotate_layer.weight, w_rot)


def test_state_dict_carries_the_interventions():
    gpt2 = make_gpt2()
    torch.manual_seed(0)
    a = ModelWithIntervenables(gpt2)
    torch.manual_seed(1)
    b = ModelWithIntervenables(make_gpt2())  # same base weights, other rotation and head
    keys = a.state_dict().keys()
    assert any(k.startswith("intervenable.interventions.0.rotate_layer") for k in keys)
    base, source = _inputs()
    assert not torch.equal(a(base, source), b(base, source))
    missing, unexpected = b.load_state_dict(a.state_dict())
    assert not missing and not unexpected
    assert torch.equal(a(base, source), b(base, source))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_casts_run_and_track_float32(dtype):
    torch.manual_seed(0)
    outer = ModelWithIntervenables(make_gpt2())
    base, source = _inputs()
    ref = outer(base, source).detach()
    cast = outer.to(dtype)
    assert cast is outer and outer.head.weight.dtype == dtype
    assert next(outer.intervenable.model.parameters()).dtype == dtype
    out = outer(base, source)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    half = outer.half() if dtype == torch.float16 else outer.bfloat16()
    assert half(base, source).dtype == dtype


def test_to_returns_the_same_module_and_keeps_working():
    torch.manual_seed(0)
    gpt2 = make_gpt2()
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    base, _ = _inputs()
    vec = torch.randn(64)
    before = im(base, source_representations=vec, unit_locations={"base": 2})[1].logits
    assert im.to("cpu") is im and im.to(torch.float32) is im
    after = im(base, source_representations=vec, unit_locations={"base": 2})[1].logits
    assert torch.equal(before, after)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in gpt2.modules())


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    gpt2 = make_gpt2()
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="vanilla"), gpt2)
    base, source = _inputs()
    with torch.no_grad():
        eager = im(base, [source], {"sources->base": 3})[1].logits
        compiled = torch.compile(im)(base, [source], {"sources->base": 3})[1].logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in gpt2.modules())


@pytest.mark.parametrize("kind", ["addition", "vanilla", "rotated_space"])
def test_offloaded_model_matches_in_memory_model(kind):
    """accelerate offloading (what device_map with "cpu"/"disk" entries does) leaves the
    weights on the meta device; interventions go to the execution device instead."""
    from accelerate import cpu_offload

    ref = make_gpt2()
    offloaded = make_gpt2()
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    assert next(offloaded.parameters()).device.type == "meta"
    base, source = _inputs()
    outs = []
    for model in (ref, offloaded):
        torch.manual_seed(0)
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type=kind), model)
        assert all(p.device.type == "cpu" for p in im.interventions.parameters())
        kw = {"source_representations": torch.ones(64)} if kind == "addition" else {"sources": [source]}
        with torch.no_grad():
            outs.append(im(base, unit_locations={"sources->base": 3}, **kw)[1].logits)
    assert torch.equal(outs[0], outs[1])
