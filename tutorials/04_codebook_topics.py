"""Codebook features: train a tiny story model with codebooks, find topic codes, steer it.

Run: ``python tutorials/04_codebook_topics.py``; ``TUTORIAL_SMALL=1`` gives the CI-sized run of
the same steps; ``TUTORIAL_SEED=n`` another seed (corpus, initialisation, training order,
sampling). This is the codebook paper's topic-steering tutorial (Tamkin, Taufeeque and Goodman,
2023) on a model small enough to train here:

1. a synthetic corpus of children's stories about eight topics (dragon, flower, fire, baby,
   ball, cat, boat, tree), built from templates and word lists, and a word-level tokenizer
   built on it;
2. a one-layer GPT-2 with a codebook on every attention head's output
   (``head_attention_value_output``: one codebook per head, ``k`` codes of ``num_codes``),
   trained with :func:`~pyvene_like.codebook.train_codebook_model` (language-modelling loss,
   reconstruction term, dead-code replacement);
3. :func:`~pyvene_like.codebook.record_codes` over held-out stories, and
   :func:`~pyvene_like.codebook.code_search` per topic: the codes whose firing best matches
   the topic's regular expression (precision and recall per code). The pattern is
   ``\bdragon\b.*``: a match runs from the topic's first mention to the end of the story, so
   the positive tokens are those *in a dragon context*, which is what a topic code should
   stand for (with the bare word ``\bdragon\b`` code search finds codes of the positions
   that read the word, which steer less);
4. steering with a :class:`~pyvene_like.CodebookIntervention` at every position (prompt and
   generated tokens): the best code (by F1) of each of the first ``n`` heads is *added* to the
   ``k`` codes the head picks itself (``mode="append"``). The setting, ``n`` in 2..4 with or
   without a precision floor of 0.5, is chosen per topic on four validation prompts; the table
   reports it on four other (test) prompts x 50 samples, with fresh samples, against the
   unsteered model;
5. the metric cannot reward word salad: a generation counts as *on topic* when it mentions the
   topic and is fluent: at least 90 % of its word bigrams occur in the training stories and at
   least 40 % of its words are distinct (a loop of corpus bigrams such as "the fire . the fire"
   fails that; on seed 0 no unsteered generation of 200 has under 47 %). Unsteered generations
   pass 94-99 % of the time. The table also gives the raw mention rate,
   the share of fluent generations and the NLL per token under the unsteered model;
6. results as JSON and a plot in ``tutorial_outputs/04_codebook_topics/``. Besides the
   ``table``, ``results.json`` carries the fluency keys shared with tutorial 03
   (``pv.analysis.gated_rates``): ``summary[condition][metric]`` for the conditions
   ``unsteered`` and ``codes`` and the metrics ``fluent_rate`` and ``fluent_on_topic_rate`` (a
   generation that mentions the topic and passes the gate), each ``{"mean", "sd",
   "per_seed", "per_topic"}`` with the mean over topics (one seed per run: ``sd`` is null).
   The folder also holds what the browser app reads (``pyvene-like serve
   tutorial_outputs/04_codebook_topics``): the model without its codebooks and the tokenizer
   (``model/``), the codebooks (``codebooks/``) and the code records of the held-out stories
   (``records/``).

Why this recipe (measured on CI-sized runs, 200 test generations per cell). The earlier recipe
forced four codes per topic in place of each head's second code (``mode="replace"``) and scored
any mention in 4 prompts x 10 samples. Its rise was +15..+92 points per topic depending on the
seed (it fails the old per-topic +30 check on 4 of seeds 0-9), and the mentions were word salad
("there was was was not not of the hills"): 0-16 % of those generations pass the fluency gate,
and their on-topic rate *fell* (-20..+22 points, typically -12). Forcing fewer codes, or
appending them, keeps the text closer to the corpus; which ``n`` works best differs by topic
and seed, hence the choice on validation prompts (one code, ``n=1``, never won on seeds 0-4:
its rises averaged +2..+8 points per topic, so it is not tried).

Seed spread, ``TUTORIAL_SMALL=1 TUTORIAL_SEED=s``, rise of on-topic generations (points;
seeds 0-4 were used to choose the recipe, seeds 5-9 only measure it):

======  ======  ======  ======  ======  ======  ==============  ==================
seed    dragon  flower  fire    baby    mean    mention rise    fluent, steered
======  ======  ======  ======  ======  ======  ==============  ==================
0       +19.5   +14.5   +21.5   +33.5   +22.2   +40.8           74 % (96 % unsteered)
1       +27.0   +18.0   +18.5   +38.0   +25.4   +39.5           73 % (98 %)
2       +29.5   +16.5   +14.0   +14.5   +18.6   +51.2           53 % (96 %)
3       +36.0   +40.0   +38.5   +38.0   +38.1   +56.5           76 % (95 %)
4       +8.0    +16.5   +27.5   +15.5   +16.9   +42.4           63 % (96 %)
5       +16.0   +30.0   +17.0   +20.0   +20.8   +29.9           84 % (99 %)
6       +25.0   +50.5   +39.5   +9.0    +31.0   +42.6           81 % (97 %)
7       +17.5   +32.5   +51.0   +36.0   +34.2   +47.0           83 % (98 %)
8       +34.5   +39.5   +17.0   +29.0   +30.0   +46.5           76 % (96 %)
9       +10.5   +25.5   +44.0   +44.5   +31.1   +40.2           84 % (94 %)
======  ======  ======  ======  ======  ======  ==============  ==================

Mean over seeds +26.8 (sd 7.1) for the topic mean, +22..+29 (sd 10-13) per topic; the worst
topic of any seed rose +8. ``tests/test_tutorials.py`` asks every topic to rise (> 0, two
standard deviations under the per-topic mean) and the mean to reach +10 (2.4 sd under it): a
healthy run with another training trajectory passes; the old replace recipe (topic mean -14..+3
on seeds 0-4) and no steering (0) fail.

What this does not show: steered stories are still less fluent than unsteered ones (a quarter
fail the gate; NLL per token under the unsteered model 0.5 -> 0.7..2.2), and the gate checks
word order locally (bigrams), not that a story holds together or keeps to one topic; steering
that keeps fluency as a constraint is left to a later change. It is a one-layer model on
template stories: how the recipe carries to real models is not tested here.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import pyvene_like as pv
from pyvene_like.analysis import gated_rates, perplexity
from pyvene_like.codebook import (
    code_intervention_config,
    code_search,
    record_codes,
    save_codebooks,
    train_codebook_model,
    unwrap_codebook,
    wrap_codebook,
)

SMALL = os.environ.get("TUTORIAL_SMALL") == "1"
OUT = Path(os.environ.get("TUTORIAL_OUTPUT_DIR", "tutorial_outputs")) / "04_codebook_topics"
# Tiny matrices: one thread is as fast as two, and it does not spin-wait when the CPU is shared.
torch.set_num_threads(1)

SEED = int(os.environ.get("TUTORIAL_SEED", "0"))  # one seed for corpus, initialisation, training, sampling
N_STORIES = 2_000 if SMALL else 4_000
N_RECORD = 300 if SMALL else 600  # held-out stories for recording codes
MODEL = dict(n_layer=1, n_embd=64, n_head=4, n_positions=96)
CODEBOOK = dict(num_codes=64, k=2)
TRAIN = dict(steps=600 if SMALL else 1_500, batch_size=32, lr=3e-3, reconstruction_weight=1.0,
             dead_code_steps=100, warmup_steps=50)
# Steering settings tried per topic on the validation prompts: the best code of code search in
# each of the first n heads (ranked by F1; optionally only codes with precision >= 0.5), added to
# the codes the model picks itself (mode "append"). The setting with the largest rise of fluent
# on-topic generations is kept; the table reports it on the test prompts, with fresh samples.
CANDIDATES = [(n, p) for n in (2, 3, 4) for p in (0.0, 0.5)]
MODE = "append"
PROMPTS = ["", "once upon a time ,", "once there was a", "a long time ago ,"]  # test
VAL_PROMPTS = ["there was a", "once upon a time , there was a little", "there was a girl named mia .",
               "a long time ago , there was a boy called sam ."]
SAMPLES = 50  # per prompt: 200 generations per topic and setting, about +-5 points of sampling noise
MAX_NEW_TOKENS = 40
TOPICS = ["dragon", "flower", "fire", "baby"]  # measured; the others are there to be avoided
# A generation is fluent when at least 90 % of its word bigrams occur in the training stories and
# at least FLUENT_DISTINCT of its words are distinct (a loop such as "the fire . the fire . ..."
# is made of corpus bigrams); unsteered generations pass about 95 % of the time.
FLUENT_BIGRAMS = 0.9
FLUENT_DISTINCT = 0.4

# -- 1. the corpus ----------------------------------------------------------------------------
NAMES = [("lily", "she", "her"), ("tom", "he", "his"), ("sue", "she", "her"), ("ben", "he", "his"),
         ("mia", "she", "her"), ("sam", "he", "his")]
STORY_TOPICS = {
    "dragon": ["one day {name} saw a big dragon in the sky .", "the dragon had green wings and a long tail .",
               "the dragon flew over the hills .", "{name} was not scared of the dragon .",
               "the dragon roared and {p} waved at it .", "the dragon landed near the cave .",
               "{name} and the dragon became friends ."],
    "flower": ["one day {name} found a pretty flower in the garden .", "the flower was pink and soft .",
               "{p} gave the flower some water .", "the flower grew tall in the sun .",
               "{name} smelled the flower and smiled .", "a bee sat on the flower .",
               "{name} put the flower in a pot ."],
    "fire": ["one day {name} saw a fire near the barn .", "the fire was hot and bright .",
             "smoke came out of the fire .", "{p} ran to get help with the fire .",
             "the firemen put out the fire with water .", "the fire made the wood black .",
             "{name} stayed far from the fire ."],
    "baby": ["one day {name} met a little baby .", "the baby had tiny hands and feet .",
             "the baby laughed and clapped .", "{name} sang a song to the baby .",
             "the baby drank milk from a bottle .", "{p} rocked the baby to sleep .",
             "the baby smiled at {name} ."],
    "ball": ["one day {name} got a new ball .", "the ball was round and blue .", "{p} kicked the ball very far .",
             "the ball bounced down the street .", "{name} threw the ball to a friend .",
             "the ball rolled under the car .", "{name} played with the ball all day ."],
    "cat": ["one day {name} found a small cat .", "the cat had soft gray fur .", "the cat said meow .",
            "{p} gave the cat a bowl of milk .", "the cat slept on the bed .", "the cat chased a mouse .",
            "{name} hugged the cat ."],
    "boat": ["one day {name} saw a boat on the lake .", "the boat had a white sail .",
             "{p} sat in the boat with dad .", "the boat went over the waves .", "the boat floated near the shore .",
             "{name} rowed the boat home .", "the boat was fast and fun ."],
    "tree": ["one day {name} climbed a tall tree .", "the tree had many green leaves .",
             "a bird lived in the tree .", "{p} sat under the tree in the shade .", "the tree was very old .",
             "apples fell from the tree .", "{name} loved the big tree ."],
}
OPENERS = [("once upon a time , there was a little {kid} named {name} .", 1),
           ("once there was a little {kid} named {name} .", 1),
           ("a long time ago , there was a {kid} called {name} .", 1),
           ("there was a {kid} named {name} .", 1)]
ENDINGS = ["the end .", "{name} was very happy .", "it was a good day .", "{p} went home to sleep ."]


def make_story(rng: random.Random, topic: str) -> str:
    name, p, _ = rng.choice(NAMES)
    kid = "girl" if p == "she" else "boy"
    opener = rng.choice(OPENERS)[0].format(kid=kid, name=name)
    lines = STORY_TOPICS[topic]
    body = [lines[0]] + rng.sample(lines[1:], 3)
    end = rng.choice(ENDINGS)
    return " ".join([opener, *body, end]).format(name=name, p=p)


def make_corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    topics = [rng.choice(list(STORY_TOPICS)) for _ in range(n)]
    return [make_story(rng, t) for t in topics], topics


def make_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", unk_token="<unk>")


def encode(tok, texts: list[str], length: int) -> dict:
    enc = tok(["<s> " + t for t in texts], padding="max_length", max_length=length, truncation=True,
              return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# -- 4. steering --------------------------------------------------------------------------------
def generate(model, tok, prompts: list[str], im=None, seed: int = 0) -> dict:
    """SAMPLES sampled continuations per prompt: ``{prompt: (texts, token ids, prompt length)}``."""
    torch.manual_seed(seed)
    out = {}
    for prompt in prompts:
        ids = tok(["<s> " + prompt.strip()] * SAMPLES, return_tensors="pt")["input_ids"]
        kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=1.0, top_k=0,
                      pad_token_id=tok.pad_token_id, eos_token_id=None)
        base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        seq = model.generate(**base, **kwargs) if im is None else im.generate(base, timesteps="all", **kwargs)[1]
        out[prompt] = (tok.batch_decode(seq[:, ids.shape[1]:], skip_special_tokens=True), seq, ids.shape[1])
    return out


def mentions(texts: list[str], topic: str) -> float:
    rx = re.compile(rf"\b{topic}\b")
    return sum(bool(rx.search(t)) for t in texts) / len(texts)


def corpus_bigrams(texts: list[str]) -> set:
    out = set()
    for t in texts:
        w = ["<s>", *t.split()]
        out.update(zip(w, w[1:]))
    return out


def fluency(prompt: str, text: str, bigrams: set) -> tuple[float, float]:
    """(share of the generated words whose bigram with the word before is a corpus bigram,
    distinct words / words); repetition such as "was was was" fails the first."""
    words = text.split()
    seq = ["<s>", *prompt.split(), *words]
    pairs = list(zip(seq, seq[1:]))[len(seq) - 1 - len(words):]
    return (sum(p in bigrams for p in pairs) / max(len(pairs), 1), len(set(words)) / max(len(words), 1))


def unsteered_nll(model, gens: dict) -> float:
    """Mean negative log-likelihood per generated token under the model without forcing (the log
    of the shared measure's perplexity, ``pv.analysis.perplexity``)."""
    return math.log(perplexity(model, [(seq, n) for _, seq, n in gens.values()]))


def score(gens: dict, topic: str, bigrams: set) -> dict:
    """Rates over all generations: mention (the topic's word appears), fluent (see FLUENT_*), on
    topic = mention and fluent, the headline: word salad that names the topic does not count."""
    rx = re.compile(rf"\b{topic}\b")
    rows = []
    for prompt, (texts, _, _) in gens.items():
        for text in texts:
            share, distinct = fluency(prompt, text, bigrams)
            fluent = share >= FLUENT_BIGRAMS and distinct >= FLUENT_DISTINCT
            rows.append((bool(rx.search(text)), fluent, share, distinct))
    n = len(rows)
    gated = gated_rates([r[0] for r in rows], [r[1] for r in rows])  # the keys 03 reports too
    return {"mention": sum(r[0] for r in rows) / n, "fluent": sum(r[1] for r in rows) / n,
            "on_topic": sum(r[0] and r[1] for r in rows) / n, "bigram_share": sum(r[2] for r in rows) / n,
            "distinct": sum(r[3] for r in rows) / n,
            **{k: gated[k] for k in ("fluent_rate", "fluent_on_topic_rate", "on_topic_among_fluent")}}


def first_per_head(matches: list, n: int, min_precision: float) -> list:
    """The best code (matches are ranked by F1) of each of the first ``n`` heads."""
    chosen, heads = [], set()
    for m in matches:
        if m.precision >= min_precision and m.info.head not in heads:
            chosen.append(m)
            heads.add(m.info.head)
        if len(chosen) == n:
            break
    return chosen


def save_for_app(model, tok, records) -> None:
    """What ``pyvene-like serve`` reads: the model without its codebooks (the app loads
    ``codebooks/`` into a copy), its tokenizer, and the code records. Unwraps ``model``: the
    last use of it."""
    unwrap_codebook(model).save_pretrained(OUT / "model")
    tok.save_pretrained(OUT / "model")
    records.save_to_disk(OUT / "records")


def main() -> dict:
    t0 = time.perf_counter()
    random.seed(SEED)
    torch.manual_seed(SEED)
    stories, story_topics = make_corpus(N_STORIES + N_RECORD, SEED)
    tok = make_tokenizer(stories)
    train_texts, held_out = stories[:N_STORIES], stories[N_STORIES:]
    data = encode(tok, train_texts, MODEL["n_positions"])
    print(f"corpus: {len(stories)} stories, {len(tok)} words; e.g.\n  {stories[0]}")

    # 2. the model: GPT-2's own initialisation (N(0, 0.02), scaled residual projections), seeded.
    config = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id,
                        pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **MODEL)
    model = GPT2LMHeadModel(config)
    wrap_codebook(model, ["head_attention_value_output"], seed=SEED, **CODEBOOK)
    fit = train_codebook_model(model, data, seed=SEED, show_progress=not SMALL, log_every=100, **TRAIN)
    last = fit.history[-1]
    t_train = time.perf_counter() - t0
    print(f"seed {SEED}: trained {fit.global_step} steps in {fit.seconds:.1f} s: LM loss "
          f"{fit.history[0]['lm_loss']:.3f} -> {last['lm_loss']:.3f}, reconstruction {last['reconstruction_loss']:.3f}, "
          f"codes used {last['codes_used']:.2f}, dead codes replaced {sum(fit.replaced.values())}")
    OUT.mkdir(parents=True, exist_ok=True)
    save_codebooks(model, OUT / "codebooks")

    # 3. record codes on held-out stories, rank each topic's codes by code search.
    records = record_codes(model, held_out, tok, batch_size=64, top_n=5)
    ranked = {topic: code_search(records, rf"\b{topic}\b.*", top=None, min_fires=3) for topic in TOPICS}
    bigrams = corpus_bigrams(train_texts)

    # 4a. validation: each candidate setting on the validation prompts; keep the best per topic.
    base_val = generate(model, tok, VAL_PROMPTS, seed=SEED + 2)
    validation, found, settings = {}, {}, {}
    for topic in TOPICS:
        base = score(base_val, topic, bigrams)
        rows = []
        for n, min_precision in CANDIDATES:
            chosen = first_per_head(ranked[topic], n, min_precision)
            if len(chosen) < n:
                continue  # fewer heads than n have such a code
            im = pv.IntervenableModel(code_intervention_config([m.info for m in chosen], mode=MODE), model)
            s = score(generate(model, tok, VAL_PROMPTS, im, seed=SEED + 2), topic, bigrams)
            rows.append({"n": n, "min_precision": min_precision, "codes": [str(m.info) for m in chosen],
                         "rise": s["on_topic"] - base["on_topic"], **s})
        if not rows:
            raise RuntimeError(f"code search found no code for {topic!r}")
        best = max(rows, key=lambda r: r["rise"])
        validation[topic] = {"baseline": base, "candidates": rows}
        settings[topic] = (best["n"], best["min_precision"])
        found[topic] = first_per_head(ranked[topic], *settings[topic])
        print(f"\n{topic!r}: validation rise of fluent on-topic generations per setting (n codes, min precision): "
              + ", ".join(f"({r['n']}, {r['min_precision']}) {100 * r['rise']:+.0f}" for r in rows)
              + f"; kept {settings[topic]}:")
        for m in found[topic]:
            row = records.codes[(m.info.head or 0) * CODEBOOK["num_codes"] + m.info.code]
            print(f"  {m.info}  precision {m.precision:.2f} recall {m.recall:.2f}  e.g. {row['top_contexts'][0]!r}")

    # 4b. test: the kept setting on the test prompts, fresh samples, against the unsteered model.
    base_test = generate(model, tok, PROMPTS, seed=SEED + 1)
    base_nll = unsteered_nll(model, base_test)
    table, examples, gated = {}, {}, {"unsteered": {}, "codes": {}}
    for topic in TOPICS:
        im = pv.IntervenableModel(code_intervention_config([m.info for m in found[topic]], mode=MODE), model)
        steered = generate(model, tok, PROMPTS, im, seed=SEED + 1)
        b, s = score(base_test, topic, bigrams), score(steered, topic, bigrams)
        table[topic] = {"baseline": b["on_topic"], "steered": s["on_topic"], "rise": s["on_topic"] - b["on_topic"],
                        "setting": {"n": settings[topic][0], "min_precision": settings[topic][1], "mode": MODE},
                        **{k: {"baseline": b[k], "steered": s[k]} for k in ("mention", "fluent", "bigram_share",
                                                                             "distinct")},
                        "nll": {"baseline": base_nll, "steered": unsteered_nll(model, steered)},
                        "per_prompt_mention": {p: {"baseline": mentions(base_test[p][0], topic),
                                                   "steered": mentions(steered[p][0], topic)} for p in PROMPTS}}
        examples[topic] = steered[PROMPTS[1]][0][:3]
        gated["unsteered"][topic], gated["codes"][topic] = b, s
    seconds = time.perf_counter() - t0

    print("\nexample of an unsteered story:", base_test[PROMPTS[1]][0][0])
    for topic in TOPICS:
        print(f"steered to {topic!r}:", examples[topic][0])
    print(f"\ntest prompts ({len(PROMPTS)} prompts x {SAMPLES} samples, {MAX_NEW_TOKENS} new tokens), unsteered -> "
          f"steered: generations that mention the topic; that are fluent (>= {FLUENT_BIGRAMS:.0%} corpus bigrams, "
          f">= {FLUENT_DISTINCT:.0%} distinct words); that do both (on topic); NLL per token under the unsteered model")
    print("| topic | codes kept | mention (%) | fluent (%) | on topic (%) | rise (points) | NLL |")
    print("|---|---|---:|---:|---:|---:|---:|")
    def pct(row: dict, k: str) -> str:
        return f"{100 * row[k]['baseline']:.0f} -> {100 * row[k]['steered']:.0f}"

    for topic, row in table.items():
        print(f"| {topic} | {row['setting']['n']} (precision >= {row['setting']['min_precision']}) | {pct(row, 'mention')} | "
              f"{pct(row, 'fluent')} | {100 * row['baseline']:.0f} -> {100 * row['steered']:.0f} | "
              f"{100 * row['rise']:+.1f} | {row['nll']['baseline']:.2f} -> {row['nll']['steered']:.2f} |")
    print("Not shown: steered stories stay less fluent than unsteered ones and the gate checks word order "
          "locally (bigrams), not that a story holds together; one seed here (see the docstring for the "
          "spread over seeds).")

    results = {
        "small": SMALL, "seed": SEED, "seconds": round(seconds, 2), "train_seconds": round(t_train, 2),
        "pyvene_like": pv.__version__,
        "recipe": {"model": MODEL, "codebook": CODEBOOK, "train": TRAIN, "n_stories": N_STORIES,
                   "n_record": N_RECORD, "candidates": CANDIDATES, "mode": MODE, "prompts": PROMPTS,
                   "val_prompts": VAL_PROMPTS, "samples": SAMPLES, "max_new_tokens": MAX_NEW_TOKENS,
                   "fluent_bigrams": FLUENT_BIGRAMS, "fluent_distinct": FLUENT_DISTINCT},
        "training": {"history": fit.history, "replaced": fit.replaced},
        "codes": {t: [{"code": str(m.info), "precision": m.precision, "recall": m.recall} for m in ms]
                  for t, ms in found.items()},
        "validation": validation, "table": table, "examples": examples,
        # the shared fluency keys (as in 03): per condition, the mean over topics for this seed
        "summary": {cond: {k: {"mean": sum(r[k] for r in rows.values()) / len(rows), "sd": None,
                               "per_seed": [sum(r[k] for r in rows.values()) / len(rows)],
                               "per_topic": {t: r[k] for t, r in rows.items()}}
                           for k in ("fluent_rate", "fluent_on_topic_rate")}
                    for cond, rows in gated.items()},
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    plot(table)
    save_for_app(model, tok, records)
    print(f"\nsaved {OUT / 'results.json'}, {OUT / 'steering.png'} and the codebooks in {OUT / 'codebooks'}; "
          f"total {seconds:.1f} s")
    worst = min(r["rise"] for r in table.values())
    print(f"smallest rise of fluent on-topic generations: {100 * worst:+.1f} points; mean "
          f"{100 * sum(r['rise'] for r in table.values()) / len(table):+.1f}")
    return results


def plot(table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = list(table)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    width = 0.27
    bars = ((lambda t: table[t]["baseline"], "no steering, on topic"),
            (lambda t: table[t]["steered"], "codes forced, on topic (fluent)"),
            (lambda t: table[t]["mention"]["steered"], "codes forced, any mention"))
    for j, (value, label) in enumerate(bars):
        xs = [i + (j - 1) * width for i in range(len(topics))]
        ax.bar(xs, [100 * value(t) for t in topics], width, label=label, **({"hatch": "//", "alpha": 0.5} if j == 2 else {}))
    ax.set_xticks(range(len(topics)), topics)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test generations (%)")
    ax.set_title("Topic steering with codebook features")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "steering.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
    sys.exit(0)
