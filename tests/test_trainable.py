"""Trainable interventions against direct computations from their own parameters."""

import pytest
import torch
from reference import capture, run_with_edit

import pyvene_like as pv
from pyvene_like.errors import ConfigError, LocationError


def _im(gpt2, name, **kw):
    return pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type=name, **kw), gpt2)


def _by_hand(gpt2, ids, fn, pos=4):
    base, src = ids
    block = gpt2.transformer.h[1]
    s = capture(gpt2, block, "output", {"input_ids": src})

    def edit(x):
        x[:, pos : pos + 1] = fn(x[:, pos : pos + 1], s[:, pos : pos + 1])
        return x

    return run_with_edit(gpt2, block, "output", {"input_ids": base}, edit).logits


def _call(im, ids, pos=4, **kw):
    base, src = ids
    return im({"input_ids": base}, [{"input_ids": src}], {"sources->base": pos}, **kw)[1].logits


def test_rotated_space_matches_direct_computation(gpt2, ids):
    im = _im(gpt2, "rotated_space", subspace_partition=[[0, 16], [16, 64]])
    iv = im.interventions[0]
    with torch.no_grad():  # move R away from its initial value
        iv.rotate_layer.proj.parametrizations.weight.original.add_(torch.randn(64, 64) * 0.3)
    R = iv.rotate_layer.weight.detach().T  # [64, 64], orthonormal columns
    assert torch.allclose(R.T @ R, torch.eye(64), atol=1e-5)

    def fn(b, s):
        rb, rs = b @ R, s @ R
        rb[..., :16] = rs[..., :16]
        return rb @ R.T

    with torch.no_grad():
        out = _call(im, ids, subspaces=[[0]])
        assert torch.allclose(out, _by_hand(gpt2, ids, fn), atol=1e-5)
        # all rotated dims swapped == vanilla interchange; none swapped == no intervention
        vanilla = _call(_im(gpt2, "vanilla"), ids)
        assert torch.allclose(_call(im, ids, subspaces=[[0, 1]]), vanilla, atol=1e-5)
        plain = gpt2(input_ids=ids[0]).logits
        null = _im(gpt2, "rotated_space", intervention_kwargs={"interchange_dim": 0})
        assert torch.allclose(_call(null, ids), plain, atol=1e-5)


def test_low_rank_rotated_space_matches_direct_computation(gpt2, ids):
    im = _im(gpt2, "low_rank_rotated_space", low_rank_dimension=4)
    W = im.interventions[0].rotate_layer.weight.detach()  # [4, 64] orthonormal rows
    assert torch.allclose(W @ W.T, torch.eye(4), atol=1e-5)

    def fn(b, s):
        return b + (s @ W.T - b @ W.T) @ W

    with torch.no_grad():
        assert torch.allclose(_call(im, ids), _by_hand(gpt2, ids, fn), atol=1e-5)


def test_boundless_and_sigmoid_masks_match_direct_computation(gpt2, ids):
    im = _im(gpt2, "boundless_rotated_space")
    iv = im.interventions[0]
    iv.set_temperature(2.0)
    R = iv.rotate_layer.weight.detach().T
    m = torch.sigmoid((0.5 * 64 - torch.arange(64.0)) / 2.0)
    with torch.no_grad():
        expected = _by_hand(gpt2, ids, lambda b, s: ((1 - m) * (b @ R) + m * (s @ R)) @ R.T)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)

    im = _im(gpt2, "sigmoid_mask")
    iv = im.interventions[0]
    with torch.no_grad():
        iv.mask.mask_logits.copy_(torch.linspace(-3, 3, 64))
        iv.set_temperature(0.5)
        m = torch.sigmoid(torch.linspace(-3, 3, 64) / 0.5)
        expected = _by_hand(gpt2, ids, lambda b, s: (1 - m) * b + m * s)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)

    im = _im(gpt2, "sigmoid_mask_rotated_space")
    iv = im.interventions[0]
    R = iv.rotate_layer.weight.detach().T
    m = torch.sigmoid(torch.zeros(64))
    with torch.no_grad():
        expected = _by_hand(gpt2, ids, lambda b, s: ((1 - m) * (b @ R) + m * (s @ R)) @ R.T)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)


@pytest.mark.parametrize(
    "name,kw",
    [("rotated_space", {}), ("low_rank_rotated_space", {"low_rank_dimension": 8}),
     ("boundless_rotated_space", {}), ("sigmoid_mask", {}), ("sigmoid_mask_rotated_space", {})],
)
def test_gradients_reach_only_the_intervention(name, kw, ids):
    from conftest import make_gpt2

    gpt2 = make_gpt2()
    im = _im(gpt2, name, **kw)
    im.disable_model_gradients()
    params = im.get_trainable_parameters()
    assert params and im.count_parameters() == sum(p.numel() for p in params)
    assert {id(p) for p in params} == {id(p) for p in im.interventions.parameters()}
    _call(im, ids).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in gpt2.parameters())


def test_training_the_rotation_reduces_the_loss(ids):
    """Learn to make layer-1 interchange at position 4 reproduce the source's last-position logits."""
    from conftest import make_gpt2

    gpt2 = make_gpt2()
    im = _im(gpt2, "low_rank_rotated_space", low_rank_dimension=8)
    im.disable_model_gradients()
    base, src = ids
    target = gpt2(input_ids=src).logits[:, -1].detach()
    opt = torch.optim.Adam(im.get_trainable_parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": -1})
        loss = torch.nn.functional.mse_loss(out.logits[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bfloat16_model_trains_the_rotation(ids):
    from conftest import make_gpt2

    gpt2 = make_gpt2().to(torch.bfloat16)
    im = _im(gpt2, "rotated_space")
    im.disable_model_gradients()
    out = _call(im, ids)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    p = im.get_trainable_parameters()[0]
    assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all()


def test_bad_input():
    with pytest.raises(ConfigError, match="embed_dim is None — the site's width could not be determined"):
        pv.RotatedSpaceIntervention()
    with pytest.raises(ConfigError, match="needs low_rank_dimension"):
        pv.LowRankRotatedSpaceIntervention(embed_dim=8)
    with pytest.raises(ConfigError, match=r"low_rank_dimension must be in 1..8 \(the site's width\), got 9"):
        pv.LowRankRotatedSpaceIntervention(embed_dim=8, low_rank_dimension=9)


def test_subspace_errors(gpt2, ids):
    im = _im(gpt2, "rotated_space")
    with pytest.raises(LocationError, match="dimension 64 is outside the site's width 64"):
        _call(im, ids, subspaces=[[64]])
    im = _im(gpt2, "rotated_space", subspace_partition=[[0, 32], [32, 64]])
    with pytest.raises(LocationError, match=r"subspace id 2 is past subspace_partition"):
        _call(im, ids, subspaces=[[2]])
    with pytest.raises(ConfigError, match="does not take subspaces"):
        _call(_im(gpt2, "sigmoid_mask"), ids, subspaces=[[0]])
