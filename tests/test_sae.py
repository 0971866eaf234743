"""Sparse autoencoders: the SAE module, the three published file layouts (written here, byte for
byte as their libraries write them), the hook-name translator, and the SAE interventions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cache_layout
from safetensors.torch import save_file
from tiny_models import build_tiny_model

import pyvene_like as pv
from pyvene_like.errors import ConfigError, LoadError, LocationError, PyveneLikeWarning, ShapeError
from pyvene_like.sae import SAE, hook_to_site, load_sae, openai_location_to_site

D_IN, D_SAE = 64, 96
ATOL = 1e-6


def _weights(seed=0, d_in=D_IN, d_sae=D_SAE, threshold=True):
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_sae),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if threshold:
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.2
    return w


def _x(seed=1, shape=(3, 5, D_IN)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the published formulas, written out independently of pyvene_like.sae ----------------------
def ref_saelens(w, x, *, arch, k=None, apply_b_dec=True, norm="none", scale=None):
    if norm == "constant_norm_rescale":
        coeff = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
        x_in = x * coeff
    elif norm == "expected_average_only_in" and scale is not None:
        x_in = x * scale
    else:
        x_in = x
    sae_in = x_in - w["b_dec"] * apply_b_dec
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        acts = F.relu(pre)
    elif arch == "jumprelu":
        acts = F.relu(pre) * (pre > w["threshold"]).to(pre)
    else:
        top = torch.topk(pre, k=k, dim=-1)
        acts = torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))
    out = acts @ w["W_dec"] + w["b_dec"]
    if norm == "constant_norm_rescale":
        out = out / coeff
    elif norm == "expected_average_only_in" and scale is not None:
        out = out / scale
    return acts, out


def ref_gemma_scope(p, x):
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * F.relu(pre)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def ref_openai(sd, x):
    """sparse_autoencoder.model.Autoencoder with TopK: LN, encoder(x - pre_bias) + latent_bias,
    TopK then ReLU, decoder(latents) + pre_bias, then * std + mu."""
    mu = x.mean(dim=-1, keepdim=True)
    xc = x - mu
    std = xc.std(dim=-1, keepdim=True)
    xn = xc / (std + 1e-5)
    pre = F.linear(xn - sd["pre_bias"], sd["encoder.weight"], sd["latent_bias"])
    top = torch.topk(pre, k=sd["activation_state_dict"]["k"], dim=-1)
    lat = torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))
    rec = F.linear(lat, sd["decoder.weight"]) + sd["pre_bias"]
    return lat, rec * std + mu


# -- files in the published layouts ------------------------------------------------------------------
def write_saelens(folder: Path, w, **cfg) -> Path:
    """SAELens 6.x ``save_model``: cfg.json (settings + metadata) and sae_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.2.hook_resid_post", "hook_head_index": None,
                        "prepend_bos": True, "context_size": 128, "sae_lens_version": "6.5.1"},
           "architecture": "standard"}
    doc.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(doc))
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def write_gemma_scope(folder: Path, w) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in w.items()})
    return folder


def openai_state(w, k=8, activation="TopK"):
    """What ``Autoencoder.state_dict()`` holds: parameters, the three stats buffers, and the
    activation's class name and state (TopK's k and postact_fn as plain values)."""
    d_in, d_sae = w["W_enc"].shape
    sd = {
        "pre_bias": w["b_dec"].clone(),
        "latent_bias": w["b_enc"].clone(),
        "stats_last_nonzero": torch.zeros(d_sae, dtype=torch.long),
        "latents_activation_frequency": torch.ones(d_sae),
        "latents_mean_square": torch.zeros(d_sae),
        "encoder.weight": w["W_enc"].T.contiguous(),
        "decoder.weight": w["W_dec"].T.contiguous(),
        "activation": activation,
    }
    if activation == "TopK":
        sd["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"}
    return sd


# -- loaders against the published formulas -----------------------------------------------------------
@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("norm", ["none", "constant_norm_rescale"])
def test_saelens_loader_matches_the_saelens_formulas(tmp_path, arch, norm):
    w = _weights(threshold=arch == "jumprelu")
    cfg = {"architecture": arch, "normalize_activations": norm}
    if arch == "topk":
        cfg["k"] = 7
    folder = write_saelens(tmp_path / "sae", w, **cfg)
    sae = load_sae(folder)
    assert sae.activation == {"standard": "relu"}.get(arch, arch) and sae.hook_name == "blocks.2.hook_resid_post"
    x = _x()
    acts, out = ref_saelens(w, x, arch=arch, k=cfg.get("k"), norm=norm)
    feats, stats = sae.encode_with_stats(x)
    torch.testing.assert_close(feats, acts, atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.decode(feats, stats), out, atol=ATOL, rtol=0)
    torch.testing.assert_close(sae(x), out, atol=ATOL, rtol=0)
    if arch == "topk":
        assert int((feats != 0).sum(-1).max()) <= 7


def test_saelens_pre_6_config_and_expected_average_scaling(tmp_path):
    """Pre-6.0 cfg.json: top-level hook_point, activation_fn_str 'topk' with activation_fn_kwargs,
    boolean normalize_activations (True = expected_average_only_in), no b_dec on the input."""
    w = _weights(threshold=False)
    folder = write_saelens(tmp_path / "old", w, metadata=None, architecture=None, hook_point="blocks.1.hook_mlp_out",
                           activation_fn_str="topk", activation_fn_kwargs={"k": 5},
                           normalize_activations=True, apply_b_dec_to_input=False, sae_lens_training_version="3.1.0")
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["architecture"], cfg["metadata"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder, norm_scaling_factor=0.37)
    assert (sae.activation, sae.k, sae.hook_name) == ("topk", 5, "blocks.1.hook_mlp_out")
    x = _x()
    _, out = ref_saelens(w, x, arch="topk", k=5, apply_b_dec=False, norm="expected_average_only_in", scale=0.37)
    torch.testing.assert_close(sae(x), out, atol=ATOL, rtol=0)
    with pytest.warns(PyveneLikeWarning, match=r"'expected_average_only_in' but no norm_scaling_factor was given"):
        unscaled = load_sae(folder)
    _, out = ref_saelens(w, x, arch="topk", k=5, apply_b_dec=False)
    torch.testing.assert_close(unscaled(x), out, atol=ATOL, rtol=0)


def test_gemma_scope_loader_matches_the_gemma_scope_formula(tmp_path):
    w = _weights()
    folder = write_gemma_scope(tmp_path / "layer_3" / "width_16k" / "average_l0_71", w)
    sae = load_sae(folder)
    assert (sae.activation, sae.apply_b_dec_to_input, sae.normalize_activations) == ("jumprelu", False, "none")
    x = _x()
    acts, out = ref_gemma_scope(w, x)
    torch.testing.assert_close(sae.encode(x), acts, atol=ATOL, rtol=0)
    torch.testing.assert_close(sae(x), out, atol=ATOL, rtol=0)
    # the JumpReLU really jumps: features just above threshold keep their full value
    feats = sae.encode(x)
    assert bool(((feats > 0) & (feats < w["threshold"])).sum() == 0)


def test_openai_loader_matches_the_openai_formula(tmp_path):
    w = _weights(threshold=False)
    sd = openai_state(w, k=8)
    torch.save(sd, tmp_path / "5.pt")
    sae = load_sae(tmp_path / "5.pt")
    assert (sae.activation, sae.k, sae.normalize_activations) == ("topk", 8, "layer_norm")
    x = _x() * 3 + 1
    lat, rec = ref_openai(sd, x)
    feats, stats = sae.encode_with_stats(x)
    torch.testing.assert_close(feats, lat, atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.decode(feats, stats), rec, atol=1e-5, rtol=0)  # values of size ~4
    # v1/v4 ReLU autoencoders: no layer norm
    torch.save(openai_state(w, activation="ReLU"), tmp_path / "relu.pt")
    relu = load_sae(tmp_path, filename="relu.pt")
    assert (relu.activation, relu.normalize_activations) == ("relu", "none")
    _, out = ref_saelens(w, x, arch="standard")
    torch.testing.assert_close(relu(x), out, atol=1e-5, rtol=0)


def test_loading_by_hub_repo_id_from_the_offline_cache(tmp_path, offline_cache):
    w = _weights()
    src = tmp_path / "repo"
    write_saelens(src / "blocks.2.hook_resid_post", w, architecture="jumprelu")
    write_gemma_scope(src / "layer_2" / "width_16k" / "average_l0_50", w)
    (src / "v5_32k" / "resid_post_mlp").mkdir(parents=True)
    torch.save(openai_state(w, k=4), src / "v5_32k" / "resid_post_mlp" / "2.pt")
    for repo in ("someone/saes", "google/gemma-scope-2b-pt-res"):
        cache_layout(offline_cache, repo, src)
    x = _x()
    a = load_sae("someone/saes", subfolder="blocks.2.hook_resid_post")
    torch.testing.assert_close(a(x), ref_saelens(w, x, arch="jumprelu")[1], atol=ATOL, rtol=0)
    g = load_sae("google/gemma-scope-2b-pt-res", subfolder="layer_2/width_16k/average_l0_50")
    assert g.hook_name == "blocks.2.hook_resid_post"
    torch.testing.assert_close(g(x), ref_gemma_scope(w, x)[1], atol=ATOL, rtol=0)
    o = load_sae("someone/saes", format="openai", filename="v5_32k/resid_post_mlp/2.pt")
    assert o.k == 4
    with pytest.raises(LoadError, match=r"'cfg.json' of Hub repo 'someone/absent' \(revision 'main'\) is not in the "
                                        r"local Hub cache .* offline mode is on"):
        load_sae("someone/absent", format="saelens")
    with pytest.raises(LoadError, match=r"cannot tell the SAE format of Hub repo 'someone/saes', subfolder 'nope'"):
        load_sae("someone/saes", subfolder="nope")


# -- bad input -----------------------------------------------------------------------------------------
class NotATensor:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_bad_files_are_clear_errors(tmp_path):
    w = _weights()
    bad = write_saelens(tmp_path / "gated", w, architecture="gated")
    with pytest.raises(LoadError, match=r"architecture 'gated' is not supported; accepted: 'standard', 'jumprelu', 'topk'"):
        load_sae(bad)
    typo = write_saelens(tmp_path / "typo", w, architecture="jumprelux")
    with pytest.raises(LoadError, match=r"architecture 'jumprelux' .* Did you mean 'jumprelu'\?"):
        load_sae(typo)
    norm = write_saelens(tmp_path / "norm", w, normalize_activations="batch_norm")
    with pytest.raises(LoadError, match=r"normalize_activations 'batch_norm' is not supported; accepted: 'none', "):
        load_sae(norm)
    no_thr = write_saelens(tmp_path / "nothr", {k: v for k, v in w.items() if k != "threshold"}, architecture="jumprelu")
    with pytest.raises(LoadError, match=r"sae_weights.safetensors: missing 'threshold'; a 'jumprelu' SAE needs 'W_enc', "
                                        r"'b_enc', 'W_dec', 'b_dec', 'threshold'"):
        load_sae(no_thr)
    wrong = write_saelens(tmp_path / "wrong", w, d_in=32)
    with pytest.raises(LoadError, match=r"'W_enc' has shape \[64, 96\], expected \[32, 96\] \(d_in=32, d_sae=96\)"):
        load_sae(wrong)
    no_d = write_saelens(tmp_path / "nod", w)
    cfg = json.loads((no_d / "cfg.json").read_text())
    del cfg["d_sae"]
    (no_d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"cfg.json: field 'd_sae' is missing"):
        load_sae(no_d)
    no_w = write_saelens(tmp_path / "now", w)
    (no_w / "sae_weights.safetensors").unlink()
    with pytest.raises(LoadError, match=r"has no 'sae_weights.safetensors' \(it holds: cfg.json\)"):
        load_sae(no_w)
    np.savez(tmp_path / "params.npz", W_enc=w["W_enc"].numpy(), W_dec=w["W_dec"].numpy())
    with pytest.raises(LoadError, match=r"params.npz: missing 'b_enc', 'b_dec', 'threshold'; a Gemma Scope params.npz"):
        load_sae(tmp_path / "params.npz")
    with pytest.raises(ConfigError, match=r"format 'gemmascope' is not supported; accepted: 'saelens', 'gemma_scope', "
                                          r"'openai'. Did you mean 'gemma_scope'\?"):
        load_sae(tmp_path, format="gemmascope")


def test_openai_pickles_that_need_more_than_tensors_are_refused(tmp_path):
    w = _weights(threshold=False)
    sd = openai_state(w)
    sd["activation_state_dict"]["extra"] = NotATensor()
    torch.save(sd, tmp_path / "evil.pt")
    with pytest.raises(LoadError, match=r"evil.pt: refused: this pickle needs more than tensors, strings and numbers "
                                        r"to load \(torch.load\(weights_only=True\) says: "):
        load_sae(tmp_path / "evil.pt")
    sd = openai_state(w)
    del sd["latent_bias"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(LoadError, match=r"partial.pt: missing 'latent_bias'; an OpenAI sparse_autoencoder state dict "
                                        r"holds 'pre_bias', 'encoder.weight', 'latent_bias', 'decoder.weight'"):
        load_sae(tmp_path / "partial.pt")
    torch.save(openai_state(w, activation="Identity"), tmp_path / "ident.pt")
    with pytest.raises(LoadError, match=r"activation 'Identity' is not supported; accepted: 'ReLU', 'TopK'"):
        load_sae(tmp_path / "ident.pt")
    sd = openai_state(w)
    sd["decoder.weight"] = sd["decoder.weight"][:-1]
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(LoadError, match=r"'decoder.weight' has shape \[63, 96\], expected \[64, 96\]"):
        load_sae(tmp_path / "shape.pt")


def test_sae_settings_and_input_are_checked():
    with pytest.raises(ConfigError, match=r"activation 'jump_relu' is not supported; accepted: 'relu', 'jumprelu', "
                                          r"'topk'. Did you mean one of 'jumprelu'"):
        SAE(4, 8, activation="jump_relu")
    with pytest.raises(ConfigError, match=r"'topk' needs k, an int in 1..d_sae=8, got k=9"):
        SAE(4, 8, activation="topk", k=9)
    with pytest.raises(ConfigError, match=r"k=3 is only used by activation 'topk', not 'relu'"):
        SAE(4, 8, k=3)
    sae = SAE(4, 8, hook_name="blocks.0.hook_resid_post")
    with pytest.raises(ShapeError, match=r"SAE input has width 5 \(shape \[2, 5\]\) but the SAE \(hook "
                                         r"'blocks.0.hook_resid_post'\) has d_in=4"):
        sae(torch.zeros(2, 5))
    ln = SAE(4, 8, normalize_activations="layer_norm")
    with pytest.raises(ConfigError, match=r"normalize_activations='layer_norm' needs the stats of the encoded input"):
        ln.decode(torch.zeros(2, 8))
    again = SAE.from_config(SAE(4, 8, activation="topk", k=2, normalize_activations="layer_norm").config())
    assert again.config()["k"] == 2 and again.normalize_activations == "layer_norm"


def test_hook_names_map_to_sites():
    assert hook_to_site("blocks.7.hook_resid_post") == (7, "block_output")
    assert hook_to_site("blocks.0.hook_mlp_out") == (0, "mlp_output")
    assert hook_to_site("blocks.3.attn.hook_z") == (3, "attention_value_output")
    assert hook_to_site("blocks.3.hook_resid_pre") == (3, "block_input")
    assert openai_location_to_site("resid_post_mlp", 8) == (8, "block_output")
    with pytest.raises(ConfigError, match=r"hook 'hook_resid_pots' has no site in this library; accepted: .*"
                                          r"Did you mean one of 'hook_resid_post'"):
        hook_to_site("blocks.1.hook_resid_pots")
    with pytest.raises(ConfigError, match=r"'hook_resid_mid' has no site in this library \(the residual stream between"):
        hook_to_site("blocks.1.hook_resid_mid")
    with pytest.raises(ConfigError, match=r"'hook_embed' is not a per-layer TransformerLens hook"):
        hook_to_site("hook_embed")
    with pytest.raises(ConfigError, match=r"OpenAI SAE location 'resid_post_attn' has no site"):
        openai_location_to_site("resid_post_attn", 1)


# -- interventions ---------------------------------------------------------------------------------------


def codec_saelens(w, arch, k=None):
    """(encode, decode) by the SAELens formulas, no normalisation."""
    def enc(x):
        return ref_saelens(w, x, arch=arch, k=k)[0]
    return enc, lambda f, x: f @ w["W_dec"] + w["b_dec"]


def codec_openai(sd):
    """(encode, decode) by OpenAI's formulas; decode needs the input for its LN stats."""
    def dec(f, x):
        mu = x.mean(dim=-1, keepdim=True)
        std = (x - mu).std(dim=-1, keepdim=True)
        return (F.linear(f, sd["decoder.weight"]) + sd["pre_bias"]) * std + mu
    return (lambda x: ref_openai(sd, x)[0]), dec


def hand_edit(codec, x, edit, error=True, source=None):
    """SAELens's use_error_term formula: decode(f') + (x - decode(f))."""
    enc, dec = codec
    f = enc(x)
    new = dec(edit(f, None if source is None else enc(source)), x)
    return new + (x - dec(f, x)) if error else new


def run_hooked(model, module, edit_at, inputs):
    """Run ``model`` with a forward hook on ``module`` that replaces ``out[:, positions]``."""
    def hook(m, args, out):
        x = out[0] if isinstance(out, tuple) else out
        x = x.clone()
        for pos, fn in edit_at:
            x[:, pos] = fn(x[:, pos])
        return (x, *out[1:]) if isinstance(out, tuple) else x
    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        h.remove()


def capture(model, module, inputs):
    box = {}
    h = module.register_forward_hook(lambda m, a, o: box.setdefault("x", (o[0] if isinstance(o, tuple) else o).clone()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return box["x"]


@pytest.fixture(scope="module")
def gpt2_sae(tmp_path_factory):
    w = _weights(seed=3)
    folder = write_saelens(tmp_path_factory.mktemp("s") / "sae", w, architecture="jumprelu")
    return load_sae(folder), w


def test_steer_and_ablate_equal_hand_written_hooks_on_gpt2(gpt2, ids, gpt2_sae):
    sae, w = gpt2_sae
    base, _ = ids
    codec = codec_saelens(w, "jumprelu")
    module = gpt2.transformer.h[2]
    # scaling or ablating an inactive feature changes nothing: use the most active ones
    a, b, c = sae.encode(capture(gpt2, module, {"input_ids": base})).mean((0, 1)).topk(3).indices.tolist()
    cases = [
        ("sae_steer", dict(features=[3, 7], mode="add", value=5.0), lambda f, s: _at(f, [3, 7], f[..., [3, 7]] + 5.0)),
        ("sae_steer", dict(features=[3, 7], mode="set", value=[4.0, -2.0]),
         lambda f, s: _at(f, [3, 7], torch.tensor([4.0, -2.0]).expand_as(f[..., [3, 7]]))),
        ("sae_steer", dict(features=[a], mode="scale", value=3.0), lambda f, s: _at(f, [a], f[..., [a]] * 3.0)),
        ("sae_ablate", dict(features=[a, b, c]), lambda f, s: _at(f, [a, b, c], torch.zeros_like(f[..., [a, b, c]]))),
        ("sae_ablate", dict(use_error_term=False), lambda f, s: torch.zeros_like(f)),
    ]
    for name, kwargs, edit in cases:
        error = kwargs.get("use_error_term", True)
        im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type=name,
                                                          intervention_kwargs={"sae": sae, **kwargs}), gpt2)
        # every position, and the last one
        for loc, positions in ((None, list(range(base.shape[1]))), (-1, [base.shape[1] - 1])):
            _, out = im({"input_ids": base}, unit_locations={"base": loc})
            expected = run_hooked(gpt2, module, [(positions, lambda x, e=edit, r=error: hand_edit(codec, x, e, r))],
                                  {"input_ids": base})
            torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0, msg=f"{name} {kwargs} at {loc}")
            plain = gpt2(input_ids=base).logits
            assert not torch.allclose(out.logits, plain, atol=1e-4)


def _at(f, idx, values):
    f = f.clone()
    f[..., idx] = values
    return f


def test_interchange_equals_a_hand_written_hook_on_llama(tmp_path):
    """OpenAI TopK layer-normed SAE on Llama's MLP output: chosen features come from the source's
    position 3 into the base's position 5; per-call subspaces choose the features per example."""
    llama = build_tiny_model("llama")
    w = _weights(seed=5, d_in=32, d_sae=48, threshold=False)
    sd = openai_state(w, k=6)
    torch.save(sd, tmp_path / "1.pt")
    sae = load_sae(tmp_path / "1.pt")
    g = torch.Generator().manual_seed(2)
    base, src = (torch.randint(2, 128, (2, 8), generator=g) for _ in range(2))
    module = llama.model.layers[1].mlp
    src_x = capture(llama, module, {"input_ids": src})[:, 3]
    codec = codec_openai(sd)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "mlp_output", intervention_type="sae_interchange",
                                                      intervention_kwargs={"sae": sae}), llama)
    for subspaces, feats in ((None, None), ([[[0, 1, 2, 3, 4, 5, 6, 7], [10, 11]]], [list(range(8)), [10, 11]])):
        _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": (3, 5)}, subspaces=subspaces)

        def swap(x, feats=feats):
            rows = []
            for b in range(x.shape[0]):
                chosen = None if feats is None else feats[b]
                edit = (lambda f, s: s) if chosen is None else (lambda f, s, c=chosen: _at(f, c, s[..., c]))
                rows.append(hand_edit(codec, x[b:b + 1], edit, source=src_x[b:b + 1]))
            return torch.cat(rows)

        expected = run_hooked(llama, module, [([5], lambda x: swap(x[:, 0])[:, None])], {"input_ids": base})
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


def test_null_edits_leave_outputs_bit_identical(gpt2, ids, gpt2_sae):
    """With the error term the output is x + (decode(f') - decode(f)); an unchanged f' makes the
    difference exactly 0, so the logits are bit-identical (not merely close)."""
    sae, w = gpt2_sae
    base, _ = ids
    plain = gpt2(input_ids=base).logits
    null = [("sae_steer", dict(mode="scale", value=1.0)), ("sae_steer", dict(features=[4], mode="add", value=0.0)),
            ("sae_interchange", {})]
    for name, kwargs in null:
        im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type=name,
                                                          intervention_kwargs={"sae": sae, **kwargs}), gpt2)
        if name == "sae_interchange":  # the base is its own source
            _, out = im({"input_ids": base}, [{"input_ids": base}], {"sources->base": None})
        else:
            _, out = im({"input_ids": base}, unit_locations={"base": None})
        assert torch.equal(out.logits, plain), name
    # without the error term the SAE's reconstruction replaces the activations
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="sae_steer",
                                                      intervention_kwargs={"sae": sae, "mode": "scale",
                                                                           "use_error_term": False}), gpt2)
    _, out = im({"input_ids": base}, unit_locations={"base": None})
    expected = run_hooked(gpt2, gpt2.transformer.h[2], [(slice(None), sae)], {"input_ids": base})
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out.logits, plain, atol=1e-3)


def test_error_term_identity_for_every_normalisation():
    x = _x() * 2 + 0.5
    for kwargs in (dict(activation="relu"), dict(activation="topk", k=5, normalize_activations="layer_norm"),
                   dict(activation="jumprelu", normalize_activations="constant_norm_rescale"),
                   dict(activation="relu", normalize_activations="expected_average_only_in", norm_scaling_factor=0.3)):
        sae = SAE(D_IN, D_SAE, **kwargs)
        sae.load_weights(_weights(), where="test")
        iv = pv.get_intervention_class("sae_steer")(sae, mode="scale", value=1.0)
        assert torch.equal(iv(x), x)
        f, stats = sae.encode_with_stats(x)
        torch.testing.assert_close(sae.decode(f, stats) + (x - sae(x)), x, atol=ATOL, rtol=0)


def test_steering_during_generate_equals_a_hand_written_hook(gpt2, gpt2_sae):
    sae, w = gpt2_sae
    codec = codec_saelens(w, "jumprelu")
    ids = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(4))
    edit = lambda f, s: _at(f, [9], f[..., [9]] + 8.0)  # noqa: E731

    def hook(m, a, out):
        if isinstance(out, tuple):
            return (hand_edit(codec, out[0], edit), *out[1:])
        return hand_edit(codec, out, edit)

    kw = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
    h = gpt2.transformer.h[1].register_forward_hook(hook)
    try:
        expected = gpt2.generate(ids, **kw)
    finally:
        h.remove()
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="sae_steer",
                                                      intervention_kwargs={"sae": sae, "features": [9], "value": 8.0}),
                              gpt2)
    for use_cache in (True, False):
        _, out = im.generate({"input_ids": ids}, timesteps="all", use_cache=use_cache, **kw)
        assert torch.equal(out.sequences, expected.sequences)
        for a, b in zip(out.logits, expected.logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert not torch.equal(out.sequences, gpt2.generate(ids, max_new_tokens=8, do_sample=False))


def test_sae_interventions_round_trip_through_save_pretrained(tmp_path, gpt2, ids, gpt2_sae):
    sae, _ = gpt2_sae
    base, src = ids
    configs = {
        "kwargs": pv.IntervenableConfig([
            pv.RepresentationConfig(1, "block_output", intervention_type="sae_steer",
                                    intervention_kwargs={"sae": sae, "features": [2, 6], "mode": "set", "value": [3.0, 1.0]}),
            pv.RepresentationConfig(2, "block_output", intervention_type="sae_ablate",
                                    intervention_kwargs={"sae": sae, "use_error_term": False}),
        ]),
        "instance": pv.RepresentationConfig(2, "block_output",
                                            intervention=pv.SAEInterchangeIntervention(sae, features=[0, 1, 2])),
    }
    for label, config in configs.items():
        im = pv.IntervenableModel(config, gpt2)
        im.save_pretrained(tmp_path / label)
        doc = json.loads((tmp_path / label / "config.json").read_text())
        kwargs = doc["intervenable_config"]["representations"][0]["intervention_kwargs"]
        assert kwargs["sae_config"] == sae.config() and "sae" not in kwargs
        loaded = pv.IntervenableModel.from_pretrained(tmp_path / label, model=gpt2)
        assert loaded.interventions[0].sae is not sae
        for a, b in zip(im.interventions, loaded.interventions):
            assert a.state_dict().keys() == b.state_dict().keys()
            assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
        if label == "instance":
            run = [{"input_ids": base}, [{"input_ids": src}], {"sources->base": 4}]
        else:
            run = [{"input_ids": base}, None, {"base": 4}]
        assert torch.equal(im(*run)[1].logits, loaded(*run)[1].logits)


def test_sae_intervention_mistakes_are_clear_errors(gpt2, gpt2_sae, ids):
    sae, _ = gpt2_sae
    llama = build_tiny_model("llama")

    def build(model=gpt2, name="sae_steer", layer=2, **kwargs):
        return pv.IntervenableModel(pv.RepresentationConfig(layer, "block_output", intervention_type=name,
                                                            intervention_kwargs=kwargs), model)

    with pytest.raises(ShapeError, match=r"sae_steer: the site's width is 32 but the SAE \(trained on "
                                         r"'blocks.2.hook_resid_post'\) has d_in=64; attach it to a site of width 64"):
        build(llama, layer=1, sae=sae)
    with pytest.raises(ConfigError, match=r"sae_ablate: give the SAE \(sae=load_sae\(...\)\) or its settings"):
        build(name="sae_ablate")
    with pytest.raises(ConfigError, match=r"sae must be a pyvene_like.sae.SAE .* got Linear"):
        build(sae=torch.nn.Linear(64, 64))
    with pytest.raises(ConfigError, match=r"mode 'multiply' is not supported; accepted: 'set', 'add', 'scale'"):
        build(sae=sae, mode="multiply")
    with pytest.raises(ConfigError, match=r"value has 3 entries but the intervention has 2 features"):
        build(sae=sae, features=[1, 2], value=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match=r"feature 96 is outside the SAE's 96 features \(accepted: 0..95\)"):
        build(sae=sae, features=[1, 96])
    im = build(sae=sae, mode="set", value=2.0)
    with pytest.raises(LocationError, match=r"subspaces: feature 200 is outside the SAE's 96 features"):
        im({"input_ids": ids[0]}, unit_locations={"base": 3}, subspaces=[[200]])


# -- settings and files that used to be cast or leak raw errors -------------------------------------
def test_sae_settings_are_strict():
    with pytest.raises(ConfigError, match=r"SAE apply_b_dec_to_input must be True or False, got 'no'"):
        SAE(4, 8, apply_b_dec_to_input="no")
    with pytest.raises(ConfigError, match=r"SAE d_in must be a positive int, got True"):
        SAE(True, 8)
    with pytest.raises(ConfigError, match=r"SAE layer_norm_eps must be a positive finite number, got nan"):
        SAE(4, 8, layer_norm_eps=math.nan)
    with pytest.raises(ConfigError, match=r"SAE dtype torch.int64 is not supported; accepted: 'float32'"):
        SAE(4, 8, dtype=torch.int64)
    with pytest.raises(ConfigError, match=r"SAE hook_name must be a string or None, got 3"):
        SAE(4, 8, hook_name=3)


def test_sae_weights_of_an_integer_dtype_are_refused():
    sae = SAE(2, 3)
    weights = {"W_enc": torch.ones(2, 3, dtype=torch.int64), "b_enc": torch.zeros(3), "W_dec": torch.zeros(3, 2),
               "b_dec": torch.zeros(2)}
    with pytest.raises(LoadError, match=r"here: 'W_enc' has dtype torch.int64; accepted: a floating-point dtype"):
        sae.load_weights(weights, where="here")
    with pytest.raises(LoadError, match=r"here: 'b_enc' must be a tensor, got list"):
        sae.load_weights({**weights, "W_enc": torch.ones(2, 3), "b_enc": [0, 0, 0]}, where="here")


def test_openai_topk_settings_that_are_not_a_dict(tmp_path):
    state = {"encoder.weight": torch.zeros(8, 4), "latent_bias": torch.zeros(8), "decoder.weight": torch.zeros(4, 8),
             "pre_bias": torch.zeros(4), "activation": "TopK", "activation_state_dict": [4]}
    torch.save(state, tmp_path / "sae.pt")
    with pytest.raises(LoadError, match=r"sae.pt: 'activation_state_dict' must be a dict \{k, postact_fn\}, got \[4\]"):
        load_sae(tmp_path / "sae.pt")


def test_saelens_sizes_that_disagree_with_the_weights_are_refused_before_allocating(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 10**9, "d_sae": 10**9}))
    save_file({"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)},
              str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(LoadError, match=r"'W_enc' has shape \[4, 8\], expected \[1000000000, 1000000000\]"):
        load_sae(tmp_path)


# -- save_sae ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    {"activation": "relu"},
    {"activation": "topk", "k": 3},
    {"activation": "jumprelu"},
    {"activation": "relu", "normalize_activations": "expected_average_only_in", "norm_scaling_factor": 2.5},
    {"activation": "relu", "normalize_activations": "layer_norm", "layer_norm_eps": 1e-3, "apply_b_dec_to_input": False},
])
def test_save_sae_round_trips_through_load_sae(tmp_path, kw):
    from pyvene_like.sae import SAE, load_sae, save_sae

    torch.manual_seed(0)
    sae = SAE(d_in=8, d_sae=12, hook_name="blocks.1.hook_resid_post", **kw)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.5)
    assert save_sae(sae, tmp_path / "sae") == tmp_path / "sae"
    back = load_sae(tmp_path / "sae")
    assert back.config() == sae.config()
    x = torch.randn(5, 8)
    assert torch.equal(back(x), sae(x)) and torch.equal(back.encode(x), sae.encode(x))


def test_save_sae_refuses_what_it_cannot_write(tmp_path):
    from pyvene_like.sae import SAE, save_sae

    with pytest.raises(pv.ConfigError, match="save_sae: expected a pyvene_like SAE, got Linear"):
        save_sae(torch.nn.Linear(2, 2), tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(pv.ConfigError, match="save_sae: save_directory .* is a file, not a folder"):
        save_sae(SAE(d_in=2, d_sae=4), tmp_path / "f")
    with pytest.raises(pv.ConfigError, match="save_sae: save_directory must be a folder path, got the empty string"):
        save_sae(SAE(d_in=2, d_sae=4), "")
