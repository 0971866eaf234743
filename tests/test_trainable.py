"""Trainable interventions against direct computations from their own parameters."""

import pytest
import torch
from conftest import make_gpt2
from reference import capture, run_with_edit
from torch import nn

import pyvene_like as pv
from pyvene_like.errors import ConfigError, LocationError, ShapeError

W = 64  # tiny GPT-2 hidden size

# name, RepresentationConfig kwargs, number of trainable parameters
TYPES = [
    ("rotated_space", {}, W * W),
    ("low_rank_rotated_space", {"low_rank_dimension": 8}, W * 8),
    ("boundless_rotated_space", {}, W * W + 1),
    ("sigmoid_mask", {}, W),
    ("sigmoid_mask_rotated_space", {}, W * W + W),
]


def _im(model, name, **kw):
    return pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type=name, **kw), model)


def _by_hand(gpt2, ids, fn, pos=4):
    """Logits with ``x[:, pos] = fn(base units, source units)`` at block 1 by a plain torch hook."""
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


def _perturb(iv, seed=0):
    """Move the rotation away from its initial value (it stays orthonormal)."""
    p = iv.rotate_layer.parametrizations.weight.original
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _rows_mask(dims_per_example):
    m = torch.zeros(len(dims_per_example), 1, 1, W, dtype=torch.bool)
    for b, dims in enumerate(dims_per_example):
        m[b, ..., dims] = True
    return m


# -- each intervention equals a direct computation from its own parameters ---------------------
def test_rotated_space_matches_direct_computation(gpt2, ids):
    part = [[0, 16], [16, 40], [40, 64]]
    im = _im(gpt2, "rotated_space", subspace_partition=part)
    iv = im.interventions[0]
    _perturb(iv)
    R = iv.rotate_layer.weight.detach()  # [64, 64]: rotated = x @ R
    assert R.shape == (W, W) and torch.allclose(R.T @ R, torch.eye(W), atol=1e-5)
    assert not torch.allclose(R, torch.eye(W), atol=0.1)

    def swap(mask):
        def fn(b, s):
            rb, rs = b @ R, s @ R
            return torch.where(mask, rs, rb) @ R.T

        return fn

    d0, d1, d2 = list(range(0, 16)), list(range(16, 40)), list(range(40, 64))
    cases = [
        ([[0, 1]], [d0 + d1] * 3),  # same contiguous dims for every example
        ([[0, 2]], [d0 + d2] * 3),  # same, not contiguous
        ([[[1], [0, 2], [2]]], [d1, d0 + d2, d2]),  # per example
    ]
    with torch.no_grad():
        for subspaces, dims in cases:
            expected = _by_hand(gpt2, ids, swap(_rows_mask(dims).squeeze(1)))
            assert torch.allclose(_call(im, ids, subspaces=subspaces), expected, atol=1e-5), subspaces
        # no subspaces: the first interchange_dim rotated dims
        iv.set_interchange_dim(16)
        assert torch.allclose(_call(im, ids), _by_hand(gpt2, ids, swap(_rows_mask([d0]).squeeze(1))), atol=1e-5)


def test_rotated_space_identity_and_null_cases(gpt2, ids):
    plain = gpt2(input_ids=ids[0]).logits
    vanilla = _call(_im(gpt2, "vanilla"), ids)
    with torch.no_grad():
        # every rotated dim interchanged: the rotation cancels, this is the vanilla interchange
        im = _im(gpt2, "rotated_space")
        _perturb(im.interventions[0])
        assert torch.allclose(_call(im, ids), vanilla, atol=1e-5)
        assert torch.allclose(_call(im, ids, subspaces=[list(range(W))]), vanilla, atol=1e-5)
        # no rotated dim interchanged: a null intervention
        null = _im(gpt2, "rotated_space", intervention_kwargs={"interchange_dim": 0})
        assert torch.allclose(_call(null, ids), plain, atol=1e-6)
        # R = identity: rotated dims are the raw dims, so it is the vanilla interchange on them
        im = _im(gpt2, "rotated_space")
        iv = im.interventions[0]
        iv.rotate_layer.parametrizations.weight[0].base.copy_(torch.eye(W))
        iv.rotate_layer.parametrizations.weight.original.zero_()
        assert torch.equal(iv.rotate_layer.weight, torch.eye(W))
        dims = [[[3, 7, 20], [0], [63, 1]]]
        expected = _call(_im(gpt2, "vanilla"), ids, subspaces=dims)
        assert not torch.allclose(expected, plain, atol=1e-3)
        assert torch.allclose(_call(im, ids, subspaces=dims), expected, atol=1e-6)


def test_low_rank_rotated_space_matches_direct_computation(gpt2, ids):
    im = _im(gpt2, "low_rank_rotated_space", low_rank_dimension=8)
    iv = im.interventions[0]
    _perturb(iv)
    R = iv.rotate_layer.weight.detach()  # [64, 8], orthonormal columns
    assert R.shape == (W, 8) and torch.allclose(R.T @ R, torch.eye(8), atol=1e-5)
    with torch.no_grad():
        expected = _by_hand(gpt2, ids, lambda b, s: b + (s @ R - b @ R) @ R.T)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)
        # subspaces pick low-rank dims, per example
        sel = torch.zeros(3, 1, 1, 8, dtype=torch.bool)
        sel[0, ..., 1] = sel[1, ..., 5] = sel[2, ..., [2, 7]] = True
        sel = sel.squeeze(1)
        expected = _by_hand(gpt2, ids, lambda b, s: b + torch.where(sel, s @ R - b @ R, 0.0) @ R.T)
        assert torch.allclose(_call(im, ids, subspaces=[[[1], [5], [2, 7]]]), expected, atol=1e-5)
        # full rank: the vanilla interchange
        full = _im(gpt2, "low_rank_rotated_space", low_rank_dimension=W)
        assert torch.allclose(_call(full, ids), _call(_im(gpt2, "vanilla"), ids), atol=1e-5)


def test_boundless_matches_direct_computation(gpt2, ids):
    im = _im(gpt2, "boundless_rotated_space")
    iv = im.interventions[0]
    _perturb(iv)
    R = iv.rotate_layer.weight.detach()
    with torch.no_grad():
        iv.intervention_boundaries.fill_(0.3)
        iv.set_temperature(2.0)
        c = torch.arange(W) + 0.5  # pyvene's two-sided window, at the dims' centres
        m = torch.sigmoid(c / 2.0) * torch.sigmoid((0.3 * W - c) / 2.0)
        expected = _by_hand(gpt2, ids, lambda b, s: ((1 - m) * (b @ R) + m * (s @ R)) @ R.T)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)
        # cold: a hard interchange of the first boundary * width rotated dims
        iv.intervention_boundaries.fill_(0.25)
        iv.set_temperature(1e-3)
        hard = torch.arange(W) < 16
        expected = _by_hand(gpt2, ids, lambda b, s: torch.where(hard, s @ R, b @ R) @ R.T)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)
    assert iv.get_temperature().item() == pytest.approx(1e-3)


def test_sigmoid_masks_match_direct_computation(gpt2, ids):
    logits = torch.linspace(-3, 3, W)
    im = _im(gpt2, "sigmoid_mask", subspace_partition=[[0, 32], [32, 64]])
    iv = im.interventions[0]
    with torch.no_grad():
        iv.mask.copy_(logits)
        iv.set_temperature(0.5)
        m = torch.sigmoid(logits / 0.5)
        expected = _by_hand(gpt2, ids, lambda b, s: (1 - m) * b + m * s)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)
        # subspaces restrict the mask (per example)
        keep = _rows_mask([list(range(32)), list(range(32, 64)), list(range(64))]).squeeze(1)
        expected = _by_hand(gpt2, ids, lambda b, s: b + (s - b) * (m * keep))
        assert torch.allclose(_call(im, ids, subspaces=[[[0], [1], [0, 1]]]), expected, atol=1e-5)

    im = _im(gpt2, "sigmoid_mask_rotated_space", subspace_partition=[[0, 10], [10, 64]])
    iv = im.interventions[0]
    _perturb(iv)
    R = iv.rotate_layer.weight.detach()
    with torch.no_grad():
        iv.masks.copy_(logits)
        iv.set_temperature(3.0)
        m = torch.sigmoid(logits / 3.0)
        expected = _by_hand(gpt2, ids, lambda b, s: ((1 - m) * (b @ R) + m * (s @ R)) @ R.T)
        assert torch.allclose(_call(im, ids), expected, atol=1e-5)
        m0 = m * (torch.arange(W) < 10)
        expected = _by_hand(gpt2, ids, lambda b, s: ((1 - m0) * (b @ R) + m0 * (s @ R)) @ R.T)
        assert torch.allclose(_call(im, ids, subspaces=[[0]]), expected, atol=1e-5)


# -- gradients and parameters ----------------------------------------------------------------------
@pytest.mark.parametrize("name,kw,n_params", TYPES, ids=[t[0] for t in TYPES])
def test_gradients_reach_only_the_intervention(name, kw, n_params, ids):
    gpt2 = make_gpt2()
    im = _im(gpt2, name, **kw)
    iv = im.interventions[0]
    assert iv.trainable and pv.get_intervention_class(name) is type(iv)
    im.disable_model_gradients()
    params = im.get_trainable_parameters()
    assert [id(p) for p in params] == [id(p) for p in iv.parameters()]
    assert im.count_parameters() == n_params == sum(p.numel() for p in params)
    assert im.count_parameters(include_model=True) == n_params
    _call(im, ids).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in gpt2.parameters())


@pytest.mark.parametrize(
    "name,kw,lr,ratio",
    [
        ("rotated_space", {"intervention_kwargs": {"interchange_dim": 8}}, 0.05, 0.05),
        ("low_rank_rotated_space", {"low_rank_dimension": 8}, 0.05, 0.05),
        ("boundless_rotated_space", {"intervention_kwargs": {"init_boundary": 0.1, "temperature": 1.0}}, 0.05, 0.05),
        ("sigmoid_mask", {"intervention_kwargs": {"temperature": 1.0}}, 0.05, 0.5),
        ("sigmoid_mask_rotated_space", {"intervention_kwargs": {"mask_init": -2.0, "temperature": 1.0}}, 0.05, 0.5),
    ],
    ids=[t[0] for t in TYPES],
)
def test_training_reduces_the_loss(name, kw, lr, ratio, ids):
    """Learn to make a partial interchange at (block 1, position 4) reproduce the full one.

    The full (vanilla) interchange is reachable: by aligning the interchanged rotated dims
    with the base-source differences, or by opening the mask. A few Adam steps must get most
    of the way there, and the rotation must stay orthonormal while it moves.
    """
    gpt2 = make_gpt2()
    base, src = ids
    with torch.no_grad():
        target = _call(_im(gpt2, "vanilla"), ids)[:, 4:]
    im = _im(gpt2, name, **kw)
    im.disable_model_gradients()
    iv = im.interventions[0]
    before = {k: v.clone() for k, v in iv.state_dict().items()}
    opt = torch.optim.Adam(im.get_trainable_parameters(), lr=lr)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(_call(im, ids)[:, 4:], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < ratio * losses[0], losses
    assert all(p.grad is None for p in gpt2.parameters())
    if hasattr(iv, "rotate_layer"):
        R = iv.rotate_layer.weight.detach()
        assert torch.allclose(R.T @ R, torch.eye(R.shape[1]), atol=1e-4)
        key = "rotate_layer.parametrizations.weight.original"
        assert not torch.allclose(iv.state_dict()[key], before[key])


@pytest.mark.parametrize("name,kw", [("rotated_space", {}), ("low_rank_rotated_space", {"low_rank_dimension": 8})])
def test_rotation_stays_orthonormal_under_adamw_weight_decay(name, kw):
    """torch's Householder map (its default for k < n) breaks after one AdamW step; ours must not."""
    iv = pv.get_intervention_class(name)(embed_dim=W, **kw)
    opt = torch.optim.AdamW(iv.parameters(), lr=0.05, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    b, s = torch.randn(8, 1, W, generator=g), torch.randn(8, 1, W, generator=g)
    for _ in range(20):
        loss = iv(b, s).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = iv.rotate_layer.weight.detach()
    assert torch.allclose(R.T @ R, torch.eye(R.shape[1]), atol=1e-4)


# -- precision -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("rotated_space", {}), ("low_rank_rotated_space", {"low_rank_dimension": 8}),
                                     ("boundless_rotated_space", {}), ("sigmoid_mask_rotated_space", {})])
def test_bfloat16_model_trains_the_float32_rotation(name, kw, ids):
    gpt2 = make_gpt2().to(torch.bfloat16)
    im = _im(gpt2, name, **kw)
    im.disable_model_gradients()
    iv = im.interventions[0]
    out = _call(im, ids)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    p = iv.rotate_layer.parametrizations.weight.original
    assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all()
    assert p.grad.abs().sum() > 0
    # casting the whole wrapper to bfloat16 keeps the intervention in float32 and still runs
    im.to(torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in list(iv.parameters()) + list(iv.buffers()))
    assert _call(im, ids).dtype == torch.bfloat16


def test_rotation_is_computed_in_float32(ids):
    iv = pv.RotatedSpaceIntervention(embed_dim=W, interchange_dim=20)
    _perturb(iv)
    g = torch.Generator().manual_seed(3)
    b, s = torch.randn(4, 2, W, generator=g), torch.randn(4, 2, W, generator=g)
    with torch.no_grad():
        ref = iv(b, s)
        R = iv.rotate_layer.weight
        assert torch.allclose(ref, b + ((s - b) @ R[:, :20]) @ R[:, :20].T, atol=1e-6)
        # bfloat16 inputs: the float32 computation, rounded once
        out = iv(b.bfloat16(), s.bfloat16())
        exact = iv(b.bfloat16().float(), s.bfloat16().float())
        assert out.dtype == torch.bfloat16 and torch.equal(out, exact.bfloat16())
        # autocast does not push the rotation down to bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = iv(b, s)
        assert auto.dtype == torch.float32 and torch.allclose(auto, ref, atol=1e-6)


def test_state_dict_round_trip_keeps_rotation_boundary_and_temperature(gpt2, ids):
    im = _im(gpt2, "boundless_rotated_space")
    iv = im.interventions[0]
    _perturb(iv)
    with torch.no_grad():
        iv.intervention_boundaries.fill_(0.4)
    iv.set_temperature(torch.tensor(0.7))
    state = iv.state_dict()
    assert state["temperature"].item() == pytest.approx(0.7)
    fresh = pv.BoundlessRotatedSpaceIntervention(embed_dim=W)
    fresh.load_state_dict(state)
    assert fresh.get_temperature().item() == pytest.approx(0.7)
    assert torch.equal(fresh.rotate_layer.weight, iv.rotate_layer.weight)
    im2 = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention=fresh), gpt2)
    with torch.no_grad():
        assert torch.equal(_call(im2, ids), _call(im, ids))


# -- bad input -------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_bad_configs():
    for cls in [pv.RotatedSpaceIntervention, pv.LowRankRotatedSpaceIntervention, pv.BoundlessRotatedSpaceIntervention,
                pv.SigmoidMaskIntervention, pv.SigmoidMaskRotatedSpaceIntervention]:
        with pytest.raises(ConfigError, match=r"embed_dim is None — the site's width could not be determined; "
                                              r"pass intervention_kwargs=\{'embed_dim'"):
            cls()
    # a site whose width the engine cannot read (a ReLU has no weight)
    with pytest.raises(ConfigError, match="embed_dim is None"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "act.output", intervention_type="rotated_space"), _Tiny())
    im = pv.IntervenableModel(
        pv.RepresentationConfig(0, "act.output", intervention_type="rotated_space", intervention_kwargs={"embed_dim": 8}),
        _Tiny(),
    )
    assert im(torch.randn(2, 8), [torch.randn(2, 8)], {"sources->base": 0})[1].shape == (2, 2)

    gpt2 = make_gpt2()
    with pytest.raises(ConfigError, match="needs low_rank_dimension"):
        _im(gpt2, "low_rank_rotated_space")
    with pytest.raises(ConfigError, match=r"low_rank_dimension must be in 1..64 \(the site's width\), got 65"):
        _im(gpt2, "low_rank_rotated_space", low_rank_dimension=65)
    with pytest.raises(ConfigError, match="reaches dimension 6 but the low-rank rotation has only low_rank_dimension=4"):
        _im(gpt2, "low_rank_rotated_space", low_rank_dimension=4, subspace_partition=[[0, 2], [2, 6]])
    with pytest.raises(ConfigError, match=r"interchange_dim must be an int in 0..64 \(the rotation width\), got 65"):
        _im(gpt2, "rotated_space", intervention_kwargs={"interchange_dim": 65})
    with pytest.warns(pv.PyveneLikeWarning, match="subspace_partition=.* is not used by BoundlessRotatedSpaceIntervention"):
        _im(gpt2, "boundless_rotated_space", subspace_partition=[[0, 32], [32, 64]])
    iv = pv.SigmoidMaskIntervention(embed_dim=W)
    for bad in [0, -1.0, float("nan")]:
        with pytest.raises(ConfigError, match="temperature must be a positive finite number"):
            iv.set_temperature(bad)
    with pytest.raises(ConfigError, match="temperature must be a positive finite number"):
        pv.BoundlessRotatedSpaceIntervention(embed_dim=W, temperature=0)


def test_bad_subspaces_and_widths(gpt2, ids):
    with pytest.raises(LocationError, match="dimension 64 is past the rotation width 64 of RotatedSpaceIntervention"):
        _call(_im(gpt2, "rotated_space"), ids, subspaces=[[64]])
    low = _im(gpt2, "low_rank_rotated_space", low_rank_dimension=4)
    with pytest.raises(LocationError, match=r"dimension 4 is past the rotation width 4 of LowRankRotatedSpaceIntervention "
                                            r"\(subspace ids index the rotated space: accepted 0..3"):
        _call(low, ids, subspaces=[[[0], [4], [1]]])
    with pytest.raises(LocationError, match="past the rotation width 64 of SigmoidMaskRotatedSpaceIntervention"):
        _call(_im(gpt2, "sigmoid_mask_rotated_space"), ids, subspaces=[[70]])
    im = _im(gpt2, "rotated_space", subspace_partition=[[0, 32], [32, 64]])
    with pytest.raises(LocationError, match=r"subspace id 2 is past subspace_partition \[\[0, 32\], \[32, 64\]\]"):
        _call(im, ids, subspaces=[[2]])
    with pytest.raises(ConfigError, match="does not take subspaces"):
        _call(_im(gpt2, "boundless_rotated_space"), ids, subspaces=[[0]])
    iv = pv.BoundlessRotatedSpaceIntervention(embed_dim=W)
    with pytest.raises(ConfigError, match="does not take subspaces"):
        iv(torch.zeros(1, 1, W), torch.zeros(1, 1, W), [[0]])
    wrong = _im(gpt2, "rotated_space", intervention_kwargs={"embed_dim": 32})
    with pytest.raises(ShapeError, match="built for width 32 .* the site's units have width 64"):
        _call(wrong, ids)
    for m in gpt2.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
