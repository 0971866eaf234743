"""Head ablation (pyvene_like.analysis.ablate_heads, head_means) against hand-written hooks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from reference import capture

from pyvene_like.analysis import AttentionHead, ablate_heads, collect_activations, head_means
from pyvene_like.errors import ConfigError, ShapeError
from tests.conftest import make_gpt2

HD = 16  # make_gpt2: n_embd 64, 4 heads


@pytest.fixture(scope="module")
def gpt2():
    return make_gpt2(seed=3)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 1000, (3, 7), generator=g)}


@contextlib.contextmanager
def edited(model, edits):
    """``edits``: ``{layer: fn(x [batch, seq, n_embd]) -> x}`` on the input of ``attn.c_proj``
    (the heads' value mixtures, head-major), as a user would hook it by hand."""
    hooks = [model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(
        lambda m, a, fn=fn: (fn(a[0].clone()),) + a[1:]) for layer, fn in edits.items()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def set_heads(heads, positions, values):
    """An edit writing ``values[h]`` (a [HD] tensor) into head ``h`` at ``positions[b]`` (None: all)."""
    def fn(x):
        for h in heads:
            sl = slice(h * HD, (h + 1) * HD)
            if positions is None:
                x[:, :, sl] = values[h]
            else:
                for b, p in enumerate(positions):
                    x[b, p, sl] = values[h]
        return x
    return fn


def test_zero_per_example_positions_two_layers_match_hooks(gpt2, ids):
    heads = [AttentionHead(1, 2), (3, 0), AttentionHead(3, 3)]
    pos = [2, 6, 4]
    zeros = {h: torch.zeros(HD) for h in range(4)}
    with torch.no_grad(), edited(gpt2, {1: set_heads([2], pos, zeros), 3: set_heads([0, 3], pos, zeros)}):
        expected = gpt2(**ids).logits
    with torch.no_grad():
        got = ablate_heads(gpt2, ids, heads, pos, kind="zero").logits
        clean = gpt2(**ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, clean)
    assert not any(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt2.modules())


def test_mean_every_position_and_last_position_match_hooks(gpt2, ids):
    g = torch.Generator().manual_seed(1)
    means = {AttentionHead(2, h): torch.randn(HD, generator=g) for h in range(4)}
    heads = [AttentionHead(2, 1), AttentionHead(2, 3)]
    values = {h.head: means[h] for h in heads}
    with torch.no_grad():
        with edited(gpt2, {2: set_heads([1, 3], None, values)}):
            every = gpt2(**ids).logits
        with edited(gpt2, {2: set_heads([1, 3], [6, 6, 6], values)}):
            last = gpt2(**ids).logits
        torch.testing.assert_close(ablate_heads(gpt2, ids, heads, kind="mean", means=means).logits, every,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ablate_heads(gpt2, ids, heads, -1, kind="mean", means=means).logits, last,
                                   atol=1e-5, rtol=1e-5)
        # mean ablation with zero means is zero ablation
        zero_means = {h: torch.zeros(HD) for h in heads}
        torch.testing.assert_close(ablate_heads(gpt2, ids, heads, [1, 2, 3], kind="mean", means=zero_means).logits,
                                   ablate_heads(gpt2, ids, heads, torch.tensor([1, 2, 3])).logits, atol=1e-6, rtol=1e-6)


def test_head_means_are_column_means(gpt2, ids, tmp_path):
    ds = collect_activations(gpt2, ids, [(1, "head_attention_value_output", [0, 2])], positions=[1, 5, 3],
                             labels=[0, 1, 0], output_dir=tmp_path / "acts")
    means = head_means(ds, [(1, 0), AttentionHead(1, 2)])
    assert set(means) == {AttentionHead(1, 0), AttentionHead(1, 2)}
    x = capture(gpt2, gpt2.transformer.h[1].attn.c_proj, "input", ids)  # the heads' mixtures, by hand
    at = x[torch.arange(3), torch.tensor([1, 5, 3])]
    torch.testing.assert_close(means[AttentionHead(1, 2)], at[:, 2 * HD:3 * HD].mean(0))
    torch.testing.assert_close(means[AttentionHead(1, 0)], at[:, :HD].mean(0))
    assert means[AttentionHead(1, 0)].shape == (HD,)
    with pytest.raises(ConfigError, match=r"no column 'L1.head_attention_value_output.H1'.*collect the head's layer"):
        head_means(ds, [(1, 1)])
    with pytest.raises(ConfigError, match="expected a datasets.Dataset from collect_activations, got dict"):
        head_means({"a": 1}, [(1, 0)])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(heads=[(1, 0)], kind="drop"), ConfigError, r"kind='drop'; accepted: 'zero', 'mean'"),
    (dict(heads=[]), ConfigError, r"heads must be a non-empty list of AttentionHead or \(layer, head\) pairs, got \[\]"),
    (dict(heads=[(1, -2)]), ConfigError, r"each head must be an AttentionHead or a \(layer, head\) pair.*\(1, -2\)"),
    (dict(heads=[(1, 0), (1, 0)]), ConfigError, r"heads repeat: \['L1H0', 'L1H0'\]"),
    (dict(heads=[(1, 0)], means={}), ConfigError, r"means are read only by kind='mean'"),
    (dict(heads=[(1, 0)], kind="mean"), ConfigError, r"kind='mean' needs means=\{head: tensor \[head_dim\]\}.*NoneType"),
    (dict(heads=[(1, 0), (2, 1)], kind="mean", means={(1, 0): torch.zeros(HD)}), ConfigError,
     r"means has no entry for head\(s\) \['L2H1'\]"),
    (dict(heads=[(1, 0), (1, 1)], kind="mean", means={(1, 0): torch.zeros(HD), (1, 1): torch.zeros(2, HD)}),
     ShapeError, r"means for layer 1 must be \[head_dim\] tensors of one width, got \[\(16,\), \(2, 16\)\]"),
    (dict(heads=[(1, 0)], positions=[1, 2]), ShapeError, r"positions has 2 entries for a batch of 3"),
    (dict(heads=[(1, 0)], positions="it"), ConfigError, r"positions must be None \(every position\), an int.*'it'"),
])
def test_ablate_heads_errors(gpt2, ids, kwargs, error, match):
    kwargs = dict(kwargs)
    heads = kwargs.pop("heads")
    positions = kwargs.pop("positions", None)
    with pytest.raises(error, match=match):
        ablate_heads(gpt2, ids, heads, positions, **kwargs)


def test_ablate_heads_input_errors(gpt2, ids):
    with pytest.raises(ConfigError, match="inputs must be a dict of tensors.*got Tensor"):
        ablate_heads(gpt2, ids["input_ids"], [(1, 0)])
    with pytest.raises(ShapeError, match=r"inputs\['input_ids'\] must be a \[batch, seq\] integer tensor.*1-d"):
        ablate_heads(gpt2, {"input_ids": torch.tensor([1, 2])}, [(1, 0)])
    with pytest.raises(ShapeError, match=r"inputs hold no \[batch, seq\] tensor"):
        ablate_heads(gpt2, {"inputs_embeds": torch.zeros(4)}, [(1, 0)])
