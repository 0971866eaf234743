"""train_sae: an SAE trained on a planted sparse dictionary finds the planted directions."""

import datasets
import pytest
import torch

import pyvene_like as pv
from pyvene_like.sae import train_sae

D_IN, N_PLANTED = 16, 24


def _planted(n=6000, active=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(N_PLANTED, D_IN, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(N_PLANTED, generator=g)[:active] for _ in range(n)])
    coef = torch.zeros(n, N_PLANTED).scatter_(1, idx, 1 + torch.rand(n, active, generator=g))
    return coef @ dirs + 0.5 + 0.01 * torch.randn(n, D_IN, generator=g), dirs


def _recovered(sae, dirs):
    return (dirs @ sae.W_dec.T).max(dim=1).values  # best cosine per planted direction (unit rows)


@pytest.mark.parametrize("architecture,kw", [("topk", {"k": 2}), ("relu", {"l1": 0.3})])
def test_recovers_planted_features(architecture, kw):
    torch.manual_seed(0)
    x, dirs = _planted()
    res = train_sae(x, 48, architecture=architecture, epochs=8, batch_size=128, lr=3e-3, show_progress=False, **kw)
    sae, hist = res.sae, res.history
    assert isinstance(sae, pv.SAE) and sae.activation == architecture and not sae.W_dec.requires_grad
    assert hist[-1]["loss"] < hist[0]["loss"]
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))
    with torch.no_grad():
        fvu = float(((sae(x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        l0 = float((sae.encode(x) > 0).float().sum(-1).mean())
    assert fvu < 0.1, fvu  # the mean (the trivial baseline) has fvu 1
    assert l0 <= (2.0 + 1e-6 if architecture == "topk" else 12), l0
    cos = _recovered(sae, dirs)
    assert float(cos.mean()) > 0.9 and float(cos.min()) > 0.7, cos
    assert res.dead_features == hist[-1]["dead"] and 0 <= res.dead_features < 48


def test_inputs_lists_and_datasets_give_the_same_sae():
    x, _ = _planted(n=512)
    a = train_sae(x, 16, k=2, epochs=1, batch_size=64, show_progress=False).sae
    b = train_sae([x[:200], x[200:]], 16, k=2, epochs=1, batch_size=64, show_progress=False).sae
    ds = datasets.Dataset.from_dict({"acts": x.numpy()})
    c = train_sae(ds, 16, k=2, epochs=1, batch_size=64, column="acts", show_progress=False).sae
    for other in (b, c):
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(getattr(a, name), getattr(other, name))


def test_bad_inputs():
    x, _ = _planted(n=64)
    with pytest.raises(pv.ConfigError, match="architecture 'jumprelu' is not supported"):
        train_sae(x, 8, architecture="jumprelu")
    with pytest.raises(pv.ConfigError, match="'topk' needs k, an int in 1..d_sae=8, got k=None"):
        train_sae(x, 8)
    with pytest.raises(pv.ConfigError, match="k=2 is only used by architecture 'topk'"):
        train_sae(x, 8, architecture="relu", k=2)
    with pytest.raises(pv.ConfigError, match="d_sae must be a positive int, got 0"):
        train_sae(x, 0, k=1)
    with pytest.raises(pv.ShapeError, match=r"must be \[n >= 2, d_in\], got shape \[16\]"):
        train_sae(x[0], 8, k=2)
    with pytest.raises(pv.ShapeError, match="NaN or inf"):
        train_sae(torch.full((4, 3), float("nan")), 8, k=2)
    with pytest.raises(pv.ConfigError, match="empty list"):
        train_sae([], 8, k=2)
    with pytest.raises(pv.ConfigError, match="no column 'activations'; columns: 'acts'"):
        train_sae(datasets.Dataset.from_dict({"acts": x.numpy()}), 8, k=2)
    with pytest.raises(pv.ShapeError, match="floating point"):
        train_sae(torch.ones(4, 3, dtype=torch.long), 8, k=2)
