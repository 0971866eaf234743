"""IntervenableModel.generate: absolute positions, KV-cache equality, padding, decoding modes.

Every comparison is against plain HF ``generate`` or a hand-written hook on tiny random models.
"""

import pytest
import torch
from tiny_models import build_tiny_model
from transformers.generation.streamers import BaseStreamer, TextStreamer

import pyvene_like as pv

NEW = 5  # new tokens: enough for several cached steps, cheap
GREEDY = dict(max_new_tokens=NEW, do_sample=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from threads; on a busy machine, spinning workers cost 10x.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return {f: build_tiny_model(f) for f in ("gpt2", "llama", "gpt_neox", "qwen2")}


def _prompt(batch=2, length=7, seed=0, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, length), generator=g)


def _main(o):
    return o[0] if isinstance(o, tuple) else o


def _block(model, layer):
    return pv.IntervenableModel(pv.RepresentationConfig(layer, "block_output"), model).sites[0].module


def _hook_generate(model, module, edit, inputs, **kw):
    """Plain ``generate`` with a hand-written hook: ``edit(x, c0)`` changes the block output ``x``
    whose first column is ``c0`` (the cache's length before the step)."""
    box = {}

    def pre(m, args, kwargs):
        cache = kwargs.get("cache")
        box["c0"] = cache.get_seq_length() if cache is not None else 0

    def post(m, args, output):
        edit(_main(output), box["c0"])

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]
    try:
        return model.generate(**inputs, **kw)
    finally:
        for h in handles:
            h.remove()


def _no_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


# -- hand-written hooks and plain generate -----------------------------------------------------
def test_every_token_addition_equals_a_hand_written_hook(gpt2):
    ids = _prompt(1, 9, vocab=1000)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(3))

    def add_all(x, c0):
        x += vec

    kw = dict(GREEDY, return_dict_in_generate=True, output_logits=True)
    expected = _hook_generate(gpt2, gpt2.transformer.h[1], add_all, {"input_ids": ids}, **kw)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    _, out = im.generate({"input_ids": ids}, source_representations=vec, timesteps="all", **kw)
    assert torch.equal(out.sequences, expected.sequences)
    for a, b in zip(out.logits, expected.logits):
        assert torch.equal(a, b)
    plain = gpt2.generate(ids, **GREEDY)
    assert not torch.equal(out.sequences, plain)
    assert _no_hooks(gpt2)


def test_generated_tokens_only_equals_a_hand_written_hook(gpt2):
    """timesteps='all' without the prompt: the last prompt position, then every new token."""
    ids = _prompt(1, 9, vocab=1000)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(4))

    def add_generated(x, c0):
        if c0 == 0:
            x[:, -1] += vec  # the prompt step: only the position that predicts token 0
        else:
            x += vec

    expected = _hook_generate(gpt2, gpt2.transformer.h[2], add_generated, {"input_ids": ids}, **GREEDY)
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="addition"), gpt2)
    _, out = im.generate({"input_ids": ids}, source_representations=vec, intervene_on_prompt=False,
                         timesteps="all", **GREEDY)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_null_intervention_leaves_generation_identical(gpt2, use_cache):
    ids = _prompt(2, 8, vocab=1000)
    kw = dict(GREEDY, use_cache=use_cache, return_dict_in_generate=True, output_logits=True)
    plain = gpt2.generate(ids, **kw)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    _, out = im.generate({"input_ids": ids}, source_representations=torch.zeros(64), timesteps="all", **kw)
    assert torch.equal(out.sequences, plain.sequences)
    for a, b in zip(out.logits, plain.logits):
        assert torch.equal(a, b)


# -- the KV cache changes nothing ----------------------------------------------------------------
def _setup(kind, model, ids):
    """(IntervenableModel, generate kwargs) for one intervention kind at layer 1."""
    width = model.config.hidden_size
    if kind == "addition":
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), model)
        vec = torch.randn(width, generator=torch.Generator().manual_seed(5)) * 4
        return im, dict(source_representations=vec)
    if kind == "interchange":
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="vanilla"), model)
        src = {"input_ids": _prompt(ids.shape[0], 6, seed=9)}
        # The source's position 2 replaces every intervened base position.
        return im, dict(sources=[src], unit_locations={"sources->base": (2, None)})
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), model)
    return im, {}


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("kind", ["addition", "interchange", "collect"])
def test_cache_and_no_cache_agree(tiny, family, kind):
    model = tiny[family]
    ids = _prompt(2, 7)
    im, kw = _setup(kind, model, ids)
    res = {}
    for use_cache in (True, False):
        res[use_cache] = im.generate({"input_ids": ids}, intervene_on_prompt=True, timesteps="all",
                                     use_cache=use_cache, **kw, **GREEDY)
    if kind == "collect":
        (_, col_c), seq_c = res[True]
        (_, col_n), seq_n = res[False]
        assert torch.equal(seq_c, seq_n)
        assert col_c[0].shape == (2, 7 + NEW, model.config.hidden_size)
        assert torch.allclose(col_c[0], col_n[0], atol=1e-5, equal_nan=True)
        assert not col_c[0][:, :7 + seq_c.shape[1] - 7].isnan().any()
    else:
        assert torch.equal(res[True][1], res[False][1])
        assert not torch.equal(res[True][1], model.generate(ids, **GREEDY))
    assert _no_hooks(model)


def test_head_units_cache_and_no_cache_agree(tiny):
    model = tiny["llama"]
    ids = _prompt(2, 6)
    src = {"input_ids": _prompt(2, 6, seed=4)}
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "head_attention_value_output", unit="h.pos"), model)
    # Heads 0 and 2 of the source's position 5, at every intervened position.
    loc = {"sources->base": ([([[0, 2]] * 2, [[5]] * 2)], [([[0, 2]] * 2, None)])}
    outs = [im.generate({"input_ids": ids}, [src], loc, timesteps="all", use_cache=c, **GREEDY)[1]
            for c in (True, False)]
    assert torch.equal(outs[0], outs[1])


def test_head_collect_on_a_fused_projection_cache_and_no_cache_agree(tiny):
    """GPT-2's query heads (columns of c_attn); without the cache, steps recompute only old pairs."""
    model = tiny["gpt2"]
    ids = _prompt(2, 6)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "head_query_output", unit="h", intervention_type="collect"), model)
    cols = [im.generate({"input_ids": ids}, unit_locations={"base": [[[1, 3]] * 2]}, timesteps=[0, 2],
                        use_cache=c, **GREEDY)[0][1][0] for c in (True, False)]
    assert cols[0].shape == (2, 2 * (6 + 2), 8)  # [rows, heads x entries, head_dim], head-major
    assert torch.allclose(cols[0], cols[1], atol=1e-5)
    box = {}
    h = model.transformer.h[1].attn.c_attn.register_forward_hook(lambda m, a, o: box.setdefault("x", o.clone()))
    try:
        model(_prompt(2, 6))
    finally:
        h.remove()
    q = box["x"][..., :32].view(2, 6, 4, 8)  # [batch, seq, heads, head_dim]
    assert torch.allclose(cols[0][:, :6], q[:, :, 1], atol=1e-5)  # head 1 at prompt positions 0..5
    assert torch.allclose(cols[0][:, 8:14], q[:, :, 3], atol=1e-5)


def test_qwen2_cache_and_no_cache_agree_with_padding(tiny):
    model = tiny["qwen2"]
    ids = _prompt(2, 7)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    im, kw = _setup("addition", model, ids)
    outs = [im.generate({"input_ids": ids, "attention_mask": mask}, unit_locations={"base": 1},
                        timesteps=[0, 2, 3], use_cache=c, **kw, **GREEDY)[1] for c in (True, False)]
    assert torch.equal(outs[0], outs[1])


# -- positions -----------------------------------------------------------------------------------
def test_collected_layout_is_prompt_positions_then_timesteps(gpt2):
    """Entry j: position [1, 3] of the prompt, then L-1+t for t in timesteps; compared with a plain
    forward over the generated sequence."""
    ids = _prompt(2, 8, vocab=1000)
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="collect"), gpt2)
    (_, (col,)), seq = im.generate({"input_ids": ids}, unit_locations={"base": [[[1, 3], [3, 1]]]},
                                   timesteps=[0, 2], **GREEDY)
    box = {}
    h = gpt2.transformer.h[2].register_forward_hook(lambda m, a, o: box.setdefault("x", _main(o).clone()))
    try:
        gpt2(seq)
    finally:
        h.remove()
    x = box["x"]
    assert col.shape == (2, 4, 64)
    pos = [[1, 3, 7, 9], [3, 1, 7, 9]]
    for b in range(2):
        assert torch.allclose(col[b], x[b, pos[b]], atol=1e-5)


def test_left_padded_batch_equals_each_example_alone(gpt2):
    prompts = [_prompt(1, 8, seed=1, vocab=1000)[0], _prompt(1, 5, seed=2, vocab=1000)[0]]
    ids = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, 8 - len(p):] = p
        mask[b, 8 - len(p):] = 1
    vec = torch.randn(64, generator=torch.Generator().manual_seed(6)) * 3
    im = pv.IntervenableModel(
        [pv.RepresentationConfig(1, "block_output", intervention_type="addition"),
         pv.RepresentationConfig(3, "block_output", intervention_type="collect")], gpt2)
    kw = dict(unit_locations={"base": 2}, timesteps=[1, 3], source_representations={0: vec}, **GREEDY)
    (_, (col,)), seq = im.generate({"input_ids": ids, "attention_mask": mask}, **kw)
    for b, p in enumerate(prompts):
        (_, (col1,)), alone = im.generate({"input_ids": p[None]}, **kw)
        assert torch.equal(seq[b, 8 - len(p):], alone[0])
        assert torch.allclose(col[b], col1[0], atol=1e-5)
    # Every prompt position (None) of a padded batch: the shorter prompt's missing entries are NaN.
    (_, (col_all,)), _ = im.generate({"input_ids": ids, "attention_mask": mask}, timesteps=None,
                                     source_representations={0: vec}, **GREEDY)
    assert col_all.shape == (2, 8, 64)
    assert not col_all[0].isnan().any()
    assert col_all[1, :5].isfinite().all() and col_all[1, 5:].isnan().all()


def test_left_padded_source_positions_count_real_tokens(gpt2):
    base = _prompt(2, 6, vocab=1000)
    src_ids = _prompt(2, 7, seed=3, vocab=1000)
    src_mask = torch.ones_like(src_ids)
    src_mask[0, :2] = 0
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), gpt2)
    _, out = im.generate({"input_ids": base}, [{"input_ids": src_ids, "attention_mask": src_mask}],
                         {"sources->base": (1, None)}, timesteps="all", **GREEDY)
    # The same source states, read at tensor columns 1 + pads: [3, 1].
    reprs = im.collect_source_representations([{"input_ids": src_ids, "attention_mask": src_mask}],
                                              {"sources->base": ([[[3], [1]]], [[[3], [1]]])})
    _, ref = im.generate({"input_ids": base}, source_representations=reprs[0], timesteps="all", **GREEDY)
    assert torch.equal(out, ref)


def test_prompt_only_generated_only_and_both(gpt2):
    ids = _prompt(1, 8, vocab=1000)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(7)) * 3
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    kw = dict(GREEDY, return_dict_in_generate=True, output_logits=True, source_representations=vec)
    plain = gpt2.generate(ids, **GREEDY, return_dict_in_generate=True, output_logits=True)

    def run(**k):
        return im.generate({"input_ids": ids}, **kw, **k)[1]

    # Steering generated token 3 only: tokens 0..2 are untouched, token 3's logits move.
    only3 = run(intervene_on_prompt=False, timesteps=3)
    for t in range(3):
        assert torch.equal(only3.logits[t], plain.logits[t])
    assert not torch.equal(only3.logits[3], plain.logits[3])
    # pyvene's generation equals timesteps 1.. : the first token is never steered.
    pyvene_like = run(intervene_on_prompt=False, timesteps=range(1, NEW))
    assert torch.equal(pyvene_like.logits[0], plain.logits[0])
    # timesteps='all' does steer the first token (through the last prompt position).
    gen_all = run(intervene_on_prompt=False, timesteps="all")
    assert not torch.equal(gen_all.logits[0], plain.logits[0])
    # Prompt only at a middle position: later logits move, the prompt's last position is untouched.
    prompt_mid = run(unit_locations={"base": 3})
    assert not torch.equal(prompt_mid.logits[0], plain.logits[0])
    prompt_last = run(unit_locations={"base": -1})
    assert torch.equal(prompt_last.logits[0], gen_all.logits[0])  # both steer position L-1 alone at step 0
    # Both = every position once (position L-1 is not added twice).
    both = run(timesteps="all")
    expected = _hook_generate(gpt2, gpt2.transformer.h[1], lambda x, c0: x.add_(vec), {"input_ids": ids},
                              **GREEDY, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(both.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(both.logits, expected.logits))


def test_subspaces_per_example_equal_a_masked_hook(gpt2):
    ids = _prompt(2, 6, vocab=1000)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(11)) * 3
    mask = torch.zeros(2, 1, 64)
    mask[0, :, :8] = 1
    mask[1, :, 8:24] = 1

    def add_masked(x, c0):
        x += vec * mask

    expected = _hook_generate(gpt2, gpt2.transformer.h[1], add_masked, {"input_ids": ids}, **GREEDY)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    subs = [[list(range(8)), list(range(8, 24))]]  # [interventions][batch][dims]
    for use_cache in (True, False):
        _, out = im.generate({"input_ids": ids}, source_representations=vec, subspaces=subs,
                             timesteps="all", use_cache=use_cache, **GREEDY)
        assert torch.equal(out, expected)


def test_timesteps_never_reached_are_nan(gpt2):
    ids = _prompt(1, 6, vocab=1000)
    plain = gpt2.generate(ids, **GREEDY)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), gpt2)
    # Token 0 is EOS: generation stops after the prompt step, timesteps 1.. are never computed.
    (_, (col,)), seq = im.generate({"input_ids": ids}, intervene_on_prompt=False, timesteps=[0, 1, -1],
                                   eos_token_id=int(plain[0, 6]), **GREEDY)
    assert seq.shape[1] == 7 and col.shape == (1, 3, 64)
    assert col[0, 0].isfinite().all() and col[0, 1:].isnan().all()


# -- decoding modes --------------------------------------------------------------------------------
def test_num_return_sequences_and_seeded_sampling(gpt2):
    ids = _prompt(2, 6, vocab=1000)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(8)) * 3
    kw = dict(max_new_tokens=NEW, do_sample=True, num_return_sequences=3)

    def add_all(x, c0):
        x += vec

    torch.manual_seed(0)
    expected = _hook_generate(gpt2, gpt2.transformer.h[1], add_all, {"input_ids": ids}, **kw)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(im.generate({"input_ids": ids}, source_representations=vec, timesteps="all", **kw)[1])
    assert outs[0].shape == (6, 6 + NEW)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], expected)
    # Per-example sources: rows 0-2 belong to example 0, rows 3-5 to example 1.
    per_ex = torch.stack([vec, torch.zeros(64)]).unsqueeze(1)  # [batch, 1, width]
    torch.manual_seed(0)
    _, mixed = im.generate({"input_ids": ids}, source_representations=per_ex, timesteps="all", **kw)
    torch.manual_seed(0)
    plain = gpt2.generate(ids, **kw)
    # The zero vector leaves example 1's rows as plain sampling draws them (rows are drawn apart).
    assert torch.equal(mixed[:3], expected[:3])
    assert torch.equal(mixed[3:], plain[3:]) and not torch.equal(mixed[:3], plain[:3])


def test_beam_search_equals_a_hand_written_hook(gpt2):
    ids = _prompt(2, 6, vocab=1000)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(9)) * 3

    def add_all(x, c0):
        x += vec

    kw = dict(max_new_tokens=NEW, num_beams=3, num_return_sequences=2, do_sample=False)
    expected = _hook_generate(gpt2, gpt2.transformer.h[1], add_all, {"input_ids": ids}, **kw)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    _, out = im.generate({"input_ids": ids}, source_representations=vec, timesteps="all", **kw)
    assert torch.equal(out, expected)
    collect = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), gpt2)
    with pytest.raises(pv.ConfigError, match="beam search"):
        collect.generate({"input_ids": ids}, timesteps="all", **kw)


def test_streamer_receives_the_generated_tokens(gpt2, capsys):
    class Tok:
        def decode(self, ids, **kw):
            return "".join(f"<{i}>" for i in ids)

    class Keep(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.chunks.append("end")

    ids = _prompt(1, 6, vocab=1000)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    keep = Keep()
    _, out = im.generate({"input_ids": ids}, source_representations=torch.ones(64), timesteps="all",
                         streamer=keep, **GREEDY)
    assert keep.chunks[0] == ids[0].tolist() and keep.chunks[-1] == "end"
    assert sum(keep.chunks[1:-1], []) == out[0, 6:].tolist()
    _, out = im.generate({"input_ids": ids}, source_representations=torch.ones(64), timesteps="all",
                         streamer=TextStreamer(Tok(), skip_prompt=True), **GREEDY)
    assert capsys.readouterr().out.strip() == "".join(f"<{i}>" for i in out[0, 6:].tolist())


# -- sources -----------------------------------------------------------------------------------
def test_sources_run_once_and_equal_given_representations(gpt2):
    ids = _prompt(2, 6, vocab=1000)
    src = {"input_ids": _prompt(2, 6, seed=5, vocab=1000)}
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output"), gpt2)
    calls = []
    h = gpt2.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        _, out = im.generate({"input_ids": ids}, [src], {"sources->base": (4, None)}, timesteps="all", **GREEDY)
    finally:
        h.remove()
    assert len(calls) == 1 + NEW  # one source pass, then the generation steps
    reprs = im.collect_source_representations([src], {"sources->base": 4})
    _, ref = im.generate({"input_ids": ids}, source_representations=reprs[0], timesteps="all", **GREEDY)
    assert torch.equal(out, ref)
    # One source position per prompt position: an interchange of the whole prompt.
    _, whole = im.generate({"input_ids": ids}, [src], {"sources->base": (None, None)}, **GREEDY)
    _, fwd = im({"input_ids": ids}, [src])
    assert torch.equal(whole[:, 6], fwd.logits[:, -1].argmax(-1))


# -- errors --------------------------------------------------------------------------------------
def test_errors_name_the_problem(gpt2):
    ids = _prompt(2, 6, vocab=1000)
    add = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    vec = torch.ones(64)
    base = {"input_ids": ids}
    with pytest.raises(pv.LocationError, match="position 6 is past the prompt of example 0"):
        add.generate(base, unit_locations={"base": 6}, source_representations=vec, **GREEDY)
    with pytest.raises(pv.LocationError, match="timestep 5 is past max_new_tokens=5"):
        add.generate(base, source_representations=vec, timesteps=[0, 5], **GREEDY)
    with pytest.raises(pv.LocationError, match="'every' is not accepted"):
        add.generate(base, source_representations=vec, timesteps="every", **GREEDY)
    with pytest.raises(pv.ConfigError, match="nothing to intervene on"):
        add.generate(base, source_representations=vec, intervene_on_prompt=False, **GREEDY)
    with pytest.raises(pv.LocationError, match="intervene_on_prompt=False"):
        add.generate(base, unit_locations={"base": 2}, source_representations=vec,
                     intervene_on_prompt=False, timesteps="all", **GREEDY)
    right = torch.ones_like(ids)
    right[0, -2:] = 0
    with pytest.raises(pv.ShapeError, match="not left-padded"):
        add.generate({"input_ids": ids, "attention_mask": right}, source_representations=vec, **GREEDY)
    with pytest.raises(pv.ShapeError, match="take one source position"):
        add.generate(base, source_representations=torch.ones(2, 6, 64), timesteps="all", **GREEDY)
    with pytest.raises(pv.ShapeError, match="gives 3 positions"):
        add.generate(base, unit_locations={"base": [[[0, 1]] * 2]}, source_representations=torch.ones(2, 3, 64), **GREEDY)
    with pytest.raises(pv.ConfigError, match="needs a source"):
        add.generate(base, timesteps="all", **GREEDY)
    with pytest.raises(pv.ConfigError, match="max_new_tokens must be a positive int"):
        add.generate(base, source_representations=vec, max_new_tokens=0)
    serial = pv.IntervenableModel(pv.IntervenableConfig(
        [pv.RepresentationConfig(1, "block_output"), pv.RepresentationConfig(2, "block_output")], mode="serial"), gpt2)
    with pytest.raises(pv.ConfigError, match="serial"):
        serial.generate(base, [base, base], **GREEDY)
    assert _no_hooks(gpt2)


def test_hooks_are_removed_after_a_failing_intervention_and_user_hooks_stay(gpt2):
    def boom(base, source):
        raise RuntimeError("boom")

    im = pv.IntervenableModel(
        pv.RepresentationConfig(1, "block_output", intervention_type="lambda",
                                intervention_kwargs={"fn": boom, "needs_source": False}), gpt2)
    mine = gpt2.transformer.h[0].register_forward_hook(lambda m, a, o: None)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            im.generate({"input_ids": _prompt(1, 5, vocab=1000)}, timesteps="all", **GREEDY)
        assert len(gpt2.transformer.h[0]._forward_hooks) == 1
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt2.modules()) == 1
    finally:
        mine.remove()


def test_return_dict_and_original_output(gpt2):
    ids = _prompt(1, 6, vocab=1000)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    out = im.generate({"input_ids": ids}, source_representations=torch.ones(64) * 3, timesteps="all",
                      output_original_output=True, return_dict=True, **GREEDY)
    assert torch.equal(out.original_outputs, gpt2.generate(ids, **GREEDY))
    assert out.intervened_outputs.shape == (1, 6 + NEW) and out.collected_activations is None
