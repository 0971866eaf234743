"""analysis.patching: every exact sweep equals a per-site loop of hand-written torch hooks
(GPT-2 and BERT tiny random models, heads included); attribution patching equals a
hand-computed gradient x activation difference; plots render."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from pyvene_like.analysis import patching as P  # noqa: E402
from pyvene_like.errors import ConfigError, LocationError  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402

BSZ, SEQ, HD = 2, 5, 8


@pytest.fixture(scope="module")
def gpt2():
    return build_tiny_model("gpt2")


@pytest.fixture(scope="module")
def bert():
    return build_tiny_model("bert")


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 128, (BSZ, SEQ), generator=g)}


def _module(model, layer, component):
    """The (module, io) each component names, written out by hand per family."""
    if hasattr(model, "transformer"):  # GPT-2
        block = model.transformer.h[layer]
        return {"block_output": (block, "output"), "attention_output": (block.attn, "output"),
                "mlp_output": (block.mlp, "output"),
                "head_attention_value_output": (block.attn.c_proj, "input")}[component]
    block = model.encoder.layer[layer]  # BERT
    return {"block_output": (block, "output"), "attention_output": (block.attention.output.dense, "output"),
            "mlp_output": (block.output.dense, "output"),
            "head_attention_value_output": (block.attention.output.dense, "input")}[component]


def _main(x):
    return x[0] if isinstance(x, tuple) else x


def _run(model, inputs, edits):
    """Run with ``edits``: [(module, io, fn(tensor) -> tensor)] applied by plain torch hooks."""
    hooks = []
    for module, io, fn in edits:
        if io == "output":
            def post(m, a, o, fn=fn):
                return (fn(o[0].clone()),) + o[1:] if isinstance(o, tuple) else fn(o.clone())
            hooks.append(module.register_forward_hook(post))
        else:
            def pre(m, a, fn=fn):
                return (fn(a[0].clone()),) + a[1:]
            hooks.append(module.register_forward_pre_hook(pre))
    try:
        return model(**inputs)
    finally:
        for h in hooks:
            h.remove()


def _capture(model, inputs, module, io, edits=()):
    box = {}

    def keep(t):
        box.setdefault("x", t.detach().clone())
        return t

    _run(model, inputs, list(edits) + [(module, io, keep)])
    return box["x"]


def _hand_sweep(model, clean, corrupted, metric, component, unit, direction, noise_edit=None):
    """The per-site loop: for each layer and site, one run of the base with the source value
    written in by a hook. Returns [*grid, batch]."""
    n_layers = model.config.num_hidden_layers
    if direction == "denoising":
        base, src, base_edits, src_edits = (corrupted or clean), clean, ([noise_edit] if noise_edit else []), []
    else:
        base, src, base_edits, src_edits = clean, (corrupted or clean), [], ([noise_edit] if noise_edit else [])
    out = []
    for layer in range(n_layers):
        module, io = _module(model, layer, component)
        acts = _capture(model, src, module, io, src_edits)
        row = []
        sites = (range(SEQ) if unit == "pos" else range(4) if unit == "h"
                 else [(h, p) for h in range(4) for p in range(SEQ)])
        for site in sites:
            def edit(x, site=site, acts=acts):
                if unit == "pos":
                    x[:, site] = acts[:, site]
                elif unit == "h":
                    x[:, :, site * HD:(site + 1) * HD] = acts[:, :, site * HD:(site + 1) * HD]
                else:
                    h, p = site
                    x[:, p, h * HD:(h + 1) * HD] = acts[:, p, h * HD:(h + 1) * HD]
                return x
            with torch.no_grad():
                row.append(metric(_run(model, base, base_edits + [(module, io, edit)])))
        out.append(torch.stack(row))
    t = torch.stack(out)
    if unit == "h.pos":
        t = t.view(n_layers, 4, SEQ, BSZ)
    return t


def _gpt2_metric():
    return P.logit_diff(3, 7)


def _bert_metric():
    w = torch.randn(32, generator=torch.Generator().manual_seed(5))
    return lambda out: out.last_hidden_state[:, -1] @ w


CASES = [
    ("block_output", "pos"), ("attention_output", "pos"), ("mlp_output", "pos"),
    ("head_attention_value_output", "h"), ("head_attention_value_output", "h.pos"),
]


@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("component,unit", CASES)
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_exact_sweep_equals_hand_hooks(family, component, unit, direction, request):
    model = request.getfixturevalue(family)
    metric = _gpt2_metric() if family == "gpt2" else _bert_metric()
    clean, corrupted = _inputs(0), _inputs(1)
    res = P.patching_sweep(model, clean, metric, corrupted=corrupted, component=component, unit=unit,
                           direction=direction, max_rows=3, progress=False)
    ref = _hand_sweep(model, clean, corrupted, metric, component, unit, direction)
    assert res.per_example.shape == ref.shape
    torch.testing.assert_close(res.per_example, ref, atol=1e-5, rtol=1e-5)
    assert res.axes == {"pos": ("layer", "position"), "h": ("layer", "head"),
                        "h.pos": ("layer", "head", "position")}[unit]
    with torch.no_grad():
        torch.testing.assert_close(res.clean, metric(model(**clean)))
        torch.testing.assert_close(res.corrupted, metric(model(**corrupted)))


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_noise_corruption_equals_hand_hooks(gpt2, direction):
    clean = _inputs(2)
    noise = P.GaussianNoise([1, 2], seed=3)
    metric = _gpt2_metric()
    res = P.patching_sweep(gpt2, clean, metric, noise=noise, direction=direction, progress=False)
    emb = noise.tensor(gpt2, BSZ, SEQ, 32, "cpu", torch.float32)
    assert emb[:, [0, 3, 4]].abs().sum() == 0 and emb[:, [1, 2]].abs().sum() > 0
    noise_edit = (gpt2.transformer.wte, "output", lambda x: x + emb)
    ref = _hand_sweep(gpt2, clean, None, metric, "block_output", "pos", direction, noise_edit)
    torch.testing.assert_close(res.per_example, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(res.corrupted, metric(_run(gpt2, clean, [noise_edit])))
    # Seeded: the same noise twice.
    again = P.patching_sweep(gpt2, clean, metric, noise=noise, direction=direction, progress=False,
                             layers=[0], positions=[1])
    torch.testing.assert_close(again.per_example[0, 0], res.per_example[0, 1])


def test_normalized_scale_and_grid_selection(gpt2):
    clean, corrupted = _inputs(0), _inputs(1)
    res = P.patching_sweep(gpt2, clean, _gpt2_metric(), corrupted=corrupted, layers=[1], positions=[0, -1],
                           progress=False)
    assert res.labels["layer"] == [1] and res.labels["position"] == [0, SEQ - 1]
    # Patching the whole last-layer residual at the last position restores the clean metric.
    assert float(res.normalized[0, 1]) == pytest.approx(1.0, abs=1e-4)
    assert res.top(1)[0][0] == {"layer": 1, "position": SEQ - 1}


def test_metrics_by_hand(gpt2):
    with torch.no_grad():
        out = gpt2(**_inputs(0))
    lg = out.logits[:, -1]
    torch.testing.assert_close(P.logit_diff([3, 4], 7)(out), lg[[0, 1], [3, 4]] - lg[:, 7])
    torch.testing.assert_close(P.token_prob(5)(out), lg.softmax(-1)[:, 5])
    assert torch.allclose(P.kl_to(lg)(out), torch.zeros(BSZ), atol=1e-6)


def test_sweep_errors(gpt2):
    clean = _inputs(0)
    with pytest.raises(ConfigError, match="either corrupted="):
        P.patching_sweep(gpt2, clean, _gpt2_metric(), progress=False)
    with pytest.raises(ConfigError, match="need a head component"):
        P.patching_sweep(gpt2, clean, _gpt2_metric(), corrupted=_inputs(1), unit="h", progress=False)
    with pytest.raises(ConfigError, match="direction 'up'"):
        P.patching_sweep(gpt2, clean, _gpt2_metric(), corrupted=_inputs(1), direction="up", progress=False)


# -- attribution patching ---------------------------------------------------------------------
def _hand_attribution(model, clean, corrupted, metric, component, unit):
    """Denoising: metric(corrupted) + sum((a_clean - a_corr) * d metric / d a_corr), with the
    gradients read by plain hooks that retain them."""
    n_layers = model.config.num_hidden_layers
    acts, grads = {}, {}
    edits = []
    for layer in range(n_layers):
        module, io = _module(model, layer, component)
        acts[layer] = _capture(model, clean, module, io)

        def keep(x, layer=layer):
            x.retain_grad()
            grads[layer] = x
            return x
        edits.append((module, io, keep))
    with torch.enable_grad():
        m = metric(_run(model, corrupted, edits))
        m.sum().backward()
    model.zero_grad(set_to_none=True)
    out = []
    for layer in range(n_layers):
        x = grads[layer]
        d = (acts[layer] - x.detach()) * x.grad  # [B, seq, width]
        if unit == "pos":
            out.append(d.sum(-1).T)
        else:
            d = d.view(BSZ, SEQ, 4, HD).sum(-1)  # [B, seq, H]
            out.append(d.sum(1).T if unit == "h" else d.permute(2, 1, 0))
    return torch.stack(out) + m.detach()


@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("component,unit", CASES)
def test_attribution_equals_hand_gradient_times_difference(family, component, unit, request):
    model = request.getfixturevalue(family)
    metric = _gpt2_metric() if family == "gpt2" else _bert_metric()
    clean, corrupted = _inputs(0), _inputs(1)
    res = P.attribution_patching(model, clean, metric, corrupted=corrupted, component=component, unit=unit)
    ref = _hand_attribution(model, clean, corrupted, metric, component, unit)
    torch.testing.assert_close(res.per_example, ref, atol=1e-4, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_compare_attribution(gpt2):
    clean, corrupted = _inputs(0), _inputs(1)
    exact = P.patching_sweep(gpt2, clean, _gpt2_metric(), corrupted=corrupted, progress=False)
    stats = P.compare_attribution(exact, exact, k=3)
    assert stats["spearman"] == pytest.approx(1.0) and stats["top_k_agreement"] == 1.0
    approx = P.attribution_patching(gpt2, clean, _gpt2_metric(), corrupted=corrupted)
    stats = P.compare_attribution(exact, approx, k=3)
    assert -1 <= stats["spearman"] <= 1 and 0 <= stats["top_k_agreement"] <= 1


def test_plots(gpt2, tmp_path):
    clean, corrupted = _inputs(0), _inputs(1)
    exact = P.patching_sweep(gpt2, clean, _gpt2_metric(), corrupted=corrupted, progress=False)
    tokens = ["a", "b", "c", "d", "e"]
    fig = P.plot_patching(exact, tokens=tokens, path=tmp_path / "trace.png")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["a (0)", "b (1)", "c (2)", "d (3)", "e (4)"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0", "1"]
    assert (tmp_path / "trace.png").stat().st_size > 0
    heads = P.patching_sweep(gpt2, clean, _gpt2_metric(), corrupted=corrupted, progress=False,
                             component="head_attention_value_output", unit="h.pos")
    with pytest.raises(ConfigError, match="head_layer"):
        P.plot_patching(heads)
    P.plot_patching(heads, head_layer=1, tokens=tokens)
    approx = P.attribution_patching(gpt2, clean, _gpt2_metric(), corrupted=corrupted)
    fig = P.plot_attribution_vs_exact(exact, approx, path=tmp_path / "scatter.png")
    assert "Spearman" in fig.axes[0].get_title()
    assert (tmp_path / "scatter.png").stat().st_size > 0


def test_window_of_layers_equals_hand_hooks():
    # ROME restores a window of MLP layers around each layer at once.
    model = build_tiny_model("gpt2", seed=1)
    # 2 layers: a window of 2 around layer 0 is {0} (clipped), around layer 1 is {0, 1}.
    clean, corrupted = _inputs(0), _inputs(1)
    metric = _gpt2_metric()
    res = P.patching_sweep(model, clean, metric, corrupted=corrupted, component="mlp_output", window=2,
                           progress=False)
    mods = [_module(model, j, "mlp_output") for j in range(2)]
    acts = [_capture(model, clean, m, io) for m, io in mods]
    spans = {0: [0], 1: [0, 1]}  # layers l - 1 .. l, clipped
    for layer in range(2):
        for p in range(SEQ):
            edits = []
            for j in spans[layer]:
                def edit(x, j=j, p=p):
                    x[:, p] = acts[j][:, p]
                    return x
                edits.append((mods[j][0], mods[j][1], edit))
            with torch.no_grad():
                ref = metric(_run(model, corrupted, edits))
            torch.testing.assert_close(res.per_example[layer, p], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="window: expected a positive int"):
        P.patching_sweep(model, clean, metric, corrupted=corrupted, window=0, progress=False)


def test_attribution_noising_equals_hand_gradient_times_difference(gpt2):
    # Noising: the base is clean; metric(clean) + sum((a_corr - a_clean) * d metric / d a_clean).
    clean, corrupted = _inputs(0), _inputs(1)
    metric = _gpt2_metric()
    res = P.attribution_patching(gpt2, clean, metric, corrupted=corrupted, direction="noising")
    ref = _hand_attribution(gpt2, corrupted, clean, metric, "block_output", "pos")
    torch.testing.assert_close(res.per_example, ref, atol=1e-4, rtol=1e-4)


def test_attribution_with_noise_equals_hand(gpt2):
    clean = _inputs(2)
    noise = P.GaussianNoise([0, 1], seed=4)
    metric = _gpt2_metric()
    res = P.attribution_patching(gpt2, clean, metric, noise=noise)
    emb = noise.tensor(gpt2, BSZ, SEQ, 32, "cpu", torch.float32)
    wte = gpt2.transformer.wte
    acts, grads = {}, {}
    edits = [(wte, "output", lambda x: x + emb)]
    for layer in range(2):
        block = gpt2.transformer.h[layer]
        acts[layer] = _capture(gpt2, clean, block, "output")

        def keep(x, layer=layer):
            x.retain_grad()
            grads[layer] = x
            return x
        edits.append((block, "output", keep))
    with torch.enable_grad():
        m = metric(_run(gpt2, clean, edits))
        m.sum().backward()
    gpt2.zero_grad(set_to_none=True)
    ref = torch.stack([((acts[j] - grads[j].detach()) * grads[j].grad).sum(-1).T for j in range(2)]) + m.detach()
    torch.testing.assert_close(res.per_example, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("unit", ["pos", "h.pos"])
def test_per_example_positions_equal_hand_hooks(gpt2, unit):
    # Columns that sit at different places per example (e.g. "the subject's last token").
    clean, corrupted = _inputs(0), _inputs(1)
    metric = _gpt2_metric()
    table = [[1, 4], [3, 0]]  # example 0: positions 1 and 4; example 1: positions 3 and 0
    component = "block_output" if unit == "pos" else "head_attention_value_output"
    res = P.patching_sweep(gpt2, clean, metric, corrupted=corrupted, component=component, unit=unit,
                           positions=table, max_rows=3, progress=False)
    assert res.labels["position"] == [0, 1]
    full = _hand_sweep(gpt2, clean, corrupted, metric, component, unit, "denoising")
    # The hand sweep patches one position for the whole batch; example b of column j is the
    # hand sweep at position table[b][j], example b.
    for b in range(BSZ):
        for j in range(2):
            p = table[b][j]
            if unit == "pos":
                torch.testing.assert_close(res.per_example[:, j, b], full[:, p, b], atol=1e-5, rtol=1e-5)
            else:
                torch.testing.assert_close(res.per_example[:, :, j, b], full[:, :, p, b], atol=1e-5, rtol=1e-5)
    approx = P.attribution_patching(gpt2, clean, metric, corrupted=corrupted, component=component, unit=unit,
                                    positions=table)
    ref = _hand_attribution(gpt2, clean, corrupted, metric, component, unit)
    for b in range(BSZ):
        for j in range(2):
            p = table[b][j]
            got = approx.per_example[:, j, b] if unit == "pos" else approx.per_example[:, :, j, b]
            want = ref[:, p, b] if unit == "pos" else ref[:, :, p, b]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(LocationError, match="one list per example"):
        P.patching_sweep(gpt2, clean, metric, corrupted=corrupted, positions=[[1], [2, 3]], progress=False)
    with pytest.raises(LocationError, match="not a position of a sequence of length 5"):
        P.patching_sweep(gpt2, clean, metric, corrupted=corrupted, positions=[7], progress=False)
