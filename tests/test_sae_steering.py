"""SAE steering toward a target (pyvene_like.sae.steering): scores, coverage, reconstruction
error and the sae_swap intervention, each against a direct computation."""

import pytest
import torch
from conftest import make_gpt2

import pyvene_like as pv
from pyvene_like.sae import steering as st

D_IN, D_SAE = 64, 48


def _sae(activation="relu", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    sae = pv.SAE(D_IN, D_SAE, activation, **kw)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5)
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5)
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g) * 0.1 - 0.2)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.1)
    return sae


def _prompts(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(torch.randint(2, 7, (1,), generator=g)), D_IN, generator=g) + shift for _ in range(n)]


def _summary(sae, a, kind):
    f = torch.relu((a - sae.b_dec) @ sae.W_enc + sae.b_enc)  # relu SAE, written out
    v = {"avg": f.sum(0), "max": f.max(0).values, "counts": (f > 0).float().sum(0)}[kind]
    return v / v.sum()


@pytest.mark.parametrize("summary", ["avg", "max", "counts"])
def test_difference_scores_match_a_direct_computation(summary):
    sae = _sae()
    align, ref = _prompts(5, 1, 0.3), _prompts(4, 2)
    res = st.score_features(sae, align, ref, summary=summary)
    want = (torch.stack([_summary(sae, a, summary) for a in align]).mean(0)
            - torch.stack([_summary(sae, a, summary) for a in ref]).mean(0))
    torch.testing.assert_close(res.scores, want, rtol=1e-5, atol=1e-6)
    assert res.top_features(3) == want.topk(3).indices.tolist()
    feats = torch.relu((torch.cat(align) - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(res.target_means, feats.mean(0))


def test_distance_scores_match_the_published_formula():
    sae = _sae()
    with torch.no_grad():
        sae.b_enc[:2] = -100.0  # two features that never fire
    align, ref = _prompts(3, 3), _prompts(6, 4)
    g = torch.Generator().manual_seed(5)
    ref_emb, align_emb = torch.randn(6, 8, generator=g), torch.randn(3, 8, generator=g)
    d = torch.tensor([min(float((r - a).norm()) for a in align_emb) for r in ref_emb])
    torch.testing.assert_close(st.min_distances(ref_emb, align_emb), d)
    res = st.score_features(sae, align, ref, method="distance", ref_distances=d)
    r = torch.stack([_summary(sae, a, "avg") for a in ref]).nan_to_num()
    raw = (d[:, None] ** 2 * r).sum(0) / r.sum(0)
    fired = r.sum(0) > 0
    want = torch.zeros(D_SAE)
    want[fired] = 1 - (raw[fired] - raw[fired].min()) / (raw[fired].max() - raw[fired].min())
    torch.testing.assert_close(res.scores, want, rtol=1e-5, atol=1e-6)
    assert not fired.all(), "the case should include features that never fire on the reference set"


def test_coverage_and_reconstruction_error_against_direct_formulas():
    sae = _sae("topk", k=4)
    align, ref = _prompts(4, 6, 0.5), _prompts(3, 7)
    res = st.score_features(sae, align, ref)
    feats = sae.encode(torch.cat(ref))
    assert res.coverage == pytest.approx(float((feats > 0).any(0).float().mean()))
    assert 0 < res.coverage < 1
    x = torch.cat(align)
    with torch.no_grad():
        fvu = ((x - sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert res.reconstruction_error == pytest.approx(float(fvu), rel=1e-5)
    assert st.coverage(sae, ref) == res.coverage


def test_prompt_activations_excludes_padding_and_matches_hidden_states():
    model = make_gpt2()
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9]]
    acts = st.prompt_activations(model, prompts, 1, batch_size=2, skip_first=0)
    assert [a.shape[0] for a in acts] == [3, 6, 1]
    for p, a in zip(prompts, acts):
        hs = model(torch.tensor([p]), output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(a, hs, rtol=1e-5, atol=1e-5)
    dropped = st.prompt_activations(model, prompts[:2], 1, skip_first=1)
    torch.testing.assert_close(dropped[1], acts[1][1:])


def _hook(sae, keep, use_error_term):
    def hook(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        w = torch.zeros(D_SAE)
        w[keep] = 1
        fires = sae.activate(pre * w) != 0
        recon = torch.where(fires, pre, 0) @ sae.W_dec + sae.b_dec
        new = x + recon - (sae.activate(pre) @ sae.W_dec + sae.b_dec) if use_error_term else recon
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
    return hook


@pytest.mark.parametrize("activation,use_error_term", [("relu", False), ("topk", False), ("relu", True)])
def test_swap_matches_a_hand_written_hook_in_forward_and_generate(activation, use_error_term):
    model = make_gpt2()
    sae = _sae(activation, k=6 if activation == "topk" else None)
    keep = [0, 3, 7, 11, 20, 33]
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    cfg = pv.RepresentationConfig(1, "block_output", intervention_type="sae_swap",
                                  intervention_kwargs={"sae": sae, "features": keep, "use_error_term": use_error_term})
    im = pv.IntervenableModel(cfg, model)
    _, out = im({"input_ids": ids}, unit_locations={"base": None})
    handle = model.transformer.h[1].register_forward_hook(_hook(sae, keep, use_error_term))
    try:
        want = model(ids).logits
        gen_want = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    torch.testing.assert_close(out.logits, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.logits, model(ids).logits)
    _, gen = im.generate({"input_ids": ids}, intervene_on_prompt=True, timesteps="all", max_new_tokens=5,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(gen, gen_want)


def test_steering_configs_from_scores():
    sae = _sae()
    res = st.score_features(sae, _prompts(4, 8, 0.4), _prompts(4, 9))
    top = res.top_features(5)
    add = res.steering_config(1, method="add", top_k=5, scale=3.0)
    assert add.intervention_type is pv.SAESteerIntervention
    kw = add.intervention_kwargs
    assert kw["features"] == top and kw["mode"] == "add" and kw["use_error_term"]
    assert kw["value"] == pytest.approx([3.0 * float(res.target_means[f]) for f in top])
    swap = res.steering_config(1, method="swap", top_k=5)
    assert swap.intervention_type is pv.SAESwapIntervention and swap.intervention_kwargs["use_error_term"] is False
    assert res.to_dict(top_k=2)["features"] == top[:2]
    # continuous weights (top_k=None): the scores min-max mapped to [0, 1], raised to power
    w01 = (res.scores - res.scores.min()) / (res.scores.max() - res.scores.min())
    cont = res.steering_config(1, method="swap", top_k=None, power=2.0).intervention_kwargs
    assert "features" not in cont and cont["weights"] == pytest.approx((w01**2).tolist())
    assert res.swap_weights() == pytest.approx(w01.tolist()) and set(res.swap_weights(0.0)) == {1.0}


def test_bad_inputs():
    sae = _sae()
    good = _prompts(2, 10)
    with pytest.raises(pv.ConfigError, match="alignment set.*empty"):
        st.score_features(sae, [], good)
    with pytest.raises(pv.ConfigError, match="reference set.*empty"):
        st.score_features(sae, good, [])
    with pytest.raises(pv.ShapeError, match="width 32 but the SAE has d_in=64"):
        st.score_features(sae, good, [torch.randn(3, 32)])
    res = st.score_features(sae, good, good)
    with pytest.raises(pv.ConfigError, match="top_k must be an int in 1..d_sae=48, got 49"):
        res.top_features(49)
    with pytest.raises(pv.ConfigError, match="method 'swop' is not supported.*Did you mean 'swap'"):
        res.steering_config(1, method="swop")
    with pytest.raises(pv.ConfigError, match=r"power=2\.0 is only used by method='swap' with top_k=None.*top_k=5"):
        res.steering_config(1, method="swap", top_k=5, power=2.0)
    with pytest.raises(pv.ConfigError, match="method='add' needs top_k"):
        res.steering_config(1, method="add", top_k=None)
    with pytest.raises(pv.ConfigError, match="swap_weights: power must be a non-negative finite number, got -1"):
        res.swap_weights(-1)
    with pytest.raises(pv.ConfigError, match="method='distance' needs ref_distances"):
        st.score_features(sae, good, good, method="distance")
    with pytest.raises(pv.ShapeError, match="ref_distances has 3 entries for 2 reference prompts"):
        st.score_features(sae, good, good, method="distance", ref_distances=[1.0, 2.0, 3.0])
    with pytest.raises(pv.ConfigError, match="summary 'mean' is not supported"):
        st.score_features(sae, good, good, summary="mean")
    with pytest.raises(pv.ConfigError, match="prompts must be a non-empty list"):
        st.prompt_activations(make_gpt2(), [], 1)
    with pytest.raises(pv.ConfigError, match="give the tokenizer"):
        st.prompt_activations(make_gpt2(), ["hello"], 1)
    with pytest.raises(pv.ShapeError, match="site's width is 64 but the SAE.*d_in=32"):
        pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="sae_swap",
                             intervention_kwargs={"sae": pv.SAE(32, 8), "features": [1]}), make_gpt2())
    with pytest.raises(pv.ConfigError, match="sae_swap: give the features to keep"):
        st.SAESwapIntervention(sae=sae)
    with pytest.raises(pv.ConfigError, match="weights must be 48 numbers"):
        st.SAESwapIntervention(sae=sae, weights=[1.0] * 3)


def test_swap_with_weights_matches_features_and_continuous_scores_reselect():
    model = make_gpt2()
    sae = _sae("topk", k=6)
    keep = [1, 4, 9, 16, 25, 36, 40]
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    w = torch.zeros(D_SAE)
    w[keep] = 1.0

    def run(**kw):
        cfg = pv.RepresentationConfig(1, "block_output", intervention_type="sae_swap",
                                      intervention_kwargs={"sae": sae, "use_error_term": False, **kw})
        return pv.IntervenableModel(cfg, model)({"input_ids": ids}, unit_locations={"base": None})[1].logits

    torch.testing.assert_close(run(features=keep), run(weights=w.tolist()), rtol=0, atol=0)
    # continuous weights (the paper's scores in [0, 1]): the top-k of pre * w fire, with their own pre
    scores = torch.rand(D_SAE, generator=torch.Generator().manual_seed(3))
    iv = st.SAESwapIntervention(sae=sae, weights=scores, use_error_term=False)
    x = torch.randn(2, 3, D_IN)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = (pre * scores).topk(6, dim=-1)
    fires = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, top.indices, top.values > 0)
    torch.testing.assert_close(iv(x), torch.where(fires, pre, 0) @ sae.W_dec + sae.b_dec)
    with pytest.raises(pv.ConfigError, match="give features= or weights=, not both"):
        st.SAESwapIntervention(sae=sae, features=[1], weights=w)
