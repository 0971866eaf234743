"""Codebook features: train a tiny story model with codebooks, find topic codes, steer it.

Run: ``python tutorials/04_codebook_topics.py``; ``TUTORIAL_SMALL=1`` gives the CI-sized run of
the same steps; ``TUTORIAL_SEEDS=3,4`` other seeds. Nothing is downloaded. For each seed (corpus,
initialisation, training order and sampling all follow it), the codebook paper's topic steering
(Tamkin, Taufeeque and Goodman, 2023) on a model small enough to train here:

1. a synthetic corpus of children's stories about eight topics (dragon, flower, fire, baby,
   ball, cat, boat, tree), built from templates and word lists, and a word-level tokenizer.
   Half the stories open with a title that names the topic ("a story about a dragon ."); the
   test prompts never do;
2. a one-layer GPT-2 with a codebook on every attention head's output
   (``head_attention_value_output``: one codebook per head, ``k`` codes of ``num_codes``),
   trained with :func:`~pyvene_like.codebook.train_codebook_model`;
3. :func:`~pyvene_like.codebook.record_codes` over held-out stories and
   :func:`~pyvene_like.codebook.code_search` per topic with the pattern ``\\bdragon\\b.*`` (the
   tokens *in a dragon context*, from the topic's first mention on);
4. steering as the paper does: a few codes (the best code by F1 in each of the first ``n``
   heads where code search finds one with precision >= 0.5) added to the codes
   each head picks (``mode="append"``), at the prompt and the first ``w`` generated tokens.
   The setting (``n`` x ``w``) is chosen per topic and seed on *validation* prompts: the one
   with the most fluent on-topic generations among those whose fluent rate stays within
   ``MAX_FLUENCY_DROP`` of unsteered. The table reports it on other (test) prompts with fresh
   samples;
5. the measure cannot reward word salad (``pv.analysis.fluency``): a generation is *fluent*
   when every sentence of prompt + generation is one the story templates can produce (an
   unfinished last sentence must begin one); *on topic* when it names the topic; the
   headline is ``fluent_on_topic_rate``, generations that are both. Also the perplexity of the
   generations under the unsteered model;
6. results as JSON and plots in ``tutorial_outputs/04_codebook_topics/``: ``steering.png`` (the
   test table) and ``sweep.png`` (fluent on-topic rate against fluent rate for every setting,
   validation prompts, mean over seeds and topics). The folder also holds what the browser app
   reads (``pyvene-like serve tutorial_outputs/04_codebook_topics``), from the first seed: the
   model without its codebooks and the tokenizer (``model/``), the codebooks (``codebooks/``)
   and the code records of the held-out stories (``records/``).

Why titles, windows and a lower temperature (measured on CI-sized runs of seed 0, validation
prompts; the recipe was settled there, then once more after a first full run of seeds 0-2: its
validation prompts ran up to the child's name, so a window of 10 tokens won there and fell
short of the test prompts, whose topic is picked 10-17 tokens in; the validation prompts were
made as short as the test ones and ``n = 4`` was added. Seeds 3 and 4 were run only after
that, as a check). Without
titles nothing in the corpus shows a topic before the sentence that picks it, so a model never
learns to let a topic in context choose the story, and forcing "in a dragon context" codes has
little to act on: fluent on-topic rose by -3..+19 points per topic at any ``n`` and window, and
forcing codes at every generated token broke the text (fluent 0.77 -> 0.23-0.61). Forcing on
the prompt only moves nothing in a one-layer model (later positions read the prompt's inputs,
not its attention outputs), nor in a two-layer one trained on this corpus. With titles the
codes choose the topic and the window keeps the rest of the story the model's own. Sampling is
at temperature 0.5: a model this small slips in most 40-word stories at 1.0 (fluent 0.28-0.37
unsteered, seed 0), 0.53 at 0.7, 0.69 at 0.5 (validation prompts), and slips hide what steering
does to fluency. The slips are real: dropped words ("the dragon became friends ."), a line of
one topic finished with another's words; a one-layer model tracks little beyond the last
words.

``results.json`` keys (stable): ``seeds``; ``conditions`` (``unsteered``, ``codes``);
``summary[condition][metric]`` = ``{"mean", "sd", "per_seed", "per_topic"}``: ``per_seed`` the
mean over topics of each seed, ``mean``/``sd`` over those, ``per_topic[topic]`` =
``{"mean", "sd", "per_seed"}`` over seeds; metrics ``fluent_rate``, ``fluent_on_topic_rate``,
``on_topic_rate``, ``on_topic_among_fluent``, ``sentence_valid_rate``, ``perplexity``;
``table[topic]`` = ``{"baseline", "steered", "rise"}`` of ``fluent_on_topic_rate``, each
``{"mean", "sd", "per_seed"}``; ``per_seed[i]`` with ``seed``, ``training`` (history),
``codes`` (per topic, the kept codes with precision and recall), ``validation`` (per topic, the
unsteered rates and one row per setting), ``chosen`` (the setting per topic), ``test`` (per
condition and topic, the metrics), ``examples``; ``sweep`` (per setting, validation rates
averaged over seeds and topics); ``target`` (mean over seeds: every topic's
``fluent_on_topic_rate`` at least 0.10 over unsteered and its ``fluent_rate`` within 0.15).

Full run (seeds 0-2, 6 min on a busy 2-core machine), test prompts, 160 generations per topic,
condition and seed; fluent and on topic, unsteered -> codes (points of rise), mean ± sd over seeds:
dragon 15 ± 3 -> 35 ± 13 (+20 ± 14), flower 13 ± 1 -> 52 ± 18 (+39 ± 16), fire 20 ± 5 -> 57 ± 33
(+37 ± 29), baby 5 ± 2 -> 34 ± 15 (+29 ± 17); fluent 98 % unsteered, 93-96 % steered; perplexity
under the unsteered model 1.29 -> 1.30. Every topic meets the target on the mean over seeds, but
not on every seed: on seed 2 dragon rose +3.7 and fire +4.4 (no setting within the fluency
budget moved them on the validation prompts either), the other ten seed-topic pairs +19..+55.
The check run on seeds 3 and 4 (``TUTORIAL_SEEDS=3,4``, after the recipe was fixed): rises
+60, +18, +69, +79 (seed 3) and +10, +16, +26, +11 (seed 4) for dragon, flower, fire, baby;
fluent 98 -> 96-100 % and 90 -> 76-93 % (seed 4's dragon lost 14 points of fluency).
What this does not show: that a story holds together beyond its sentences (the grammar accepts
a name that changes, or a second topic), steering with fluency as strict as the model's own
(steered text fails the grammar 2-12 % more often), or that any of it carries to a real model
and a codebook of thousands of codes; the titles that make steering work are part of the
corpus, and a real corpus has its own ways of putting a topic in context.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import pyvene_like as pv
from pyvene_like.analysis import CorpusGrammar, gated_rates, grammar_rates, perplexity
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

SEEDS = ([int(x) for x in os.environ["TUTORIAL_SEEDS"].split(",")] if os.environ.get("TUTORIAL_SEEDS")
         else [0] if SMALL else [0, 1, 2])
N_STORIES = 2_000 if SMALL else 4_000
N_RECORD = 300 if SMALL else 600  # held-out stories for recording codes
MODEL = dict(n_layer=1, n_embd=64, n_head=4, n_positions=64)  # the longest titled story is 63 tokens
CODEBOOK = dict(num_codes=64, k=2)
TRAIN = dict(steps=600 if SMALL else 1_000, batch_size=32, lr=3e-3, reconstruction_weight=1.0,
             dead_code_steps=100, warmup_steps=50)
TITLED = 0.5  # share of training stories that open with TITLE
TITLE = "a story about a {topic} ."
# The validation grid: n codes (the best of each of the first n heads with a precision >= the floor)
# x window (the prompt and the first w generated tokens; 40 = every generated token).
N_CODES = (1, 2, 3, 4)
WINDOWS = (10, 20) if SMALL else (10, 20, 40)
MIN_PRECISIONS = (0.5,)  # the paper keeps codes above a precision threshold; a floor of 0.0 did no better on seed 0
MAX_FLUENCY_DROP = 0.10  # on validation; the target asks 0.15 on the test prompts
MODE = "append"
PROMPTS = ["", "once upon a time ,", "once there was a", "a long time ago ,"]  # test
# Validation prompts are story openings as short as the test ones: the topic is picked as many
# tokens after them (10-17), so the window chosen on them fits the test prompts.
VAL_PROMPTS = ["once", "there was a", "once there was", "a long time ago"]
SAMPLES = 25 if SMALL else 40  # per prompt: 100 or 160 generations per topic and condition
MAX_NEW_TOKENS = 40
TEMPERATURE = 0.5
TOPICS = ["dragon", "flower", "fire", "baby"]  # measured; the others are there to be avoided
METRICS = ["fluent_on_topic_rate", "fluent_rate", "on_topic_rate", "on_topic_among_fluent", "sentence_valid_rate",
           "perplexity"]

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
    """An opener, the topic's first line and three more of its lines in random order, an ending;
    half the stories carry a title that names the topic first (see the docstring: why)."""
    titled = rng.random() < TITLED
    name, p, _ = rng.choice(NAMES)
    kid = "girl" if p == "she" else "boy"
    opener = rng.choice(OPENERS)[0].format(kid=kid, name=name)
    lines = STORY_TOPICS[topic]
    body = [lines[0]] + rng.sample(lines[1:], 3)
    end = rng.choice(ENDINGS)
    story = " ".join([opener, *body, end]).format(name=name, p=p)
    return TITLE.format(topic=topic) + " " + story if titled else story


def all_sentences() -> set[str]:
    """Every sentence ``make_story`` can produce: the grammar generations are judged by."""
    out = {TITLE.format(topic=t) for t in STORY_TOPICS}
    for name, p, _ in NAMES:
        kid = "girl" if p == "she" else "boy"
        out.update(o.format(kid=kid, name=name) for o, _ in OPENERS)
        out.update(line.format(name=name, p=p) for lines in STORY_TOPICS.values() for line in lines)
        out.update(e.format(name=name, p=p) for e in ENDINGS)
    return out


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
def generate(model, tok, prompts: list[str], config=None, window: int = MAX_NEW_TOKENS, seed: int = 0) -> list:
    """SAMPLES sampled continuations per prompt, one random stream for the whole call
    (independent samples across prompts): ``[(prompt, sequences, prompt length)]``. With a
    config, its interventions act at the prompt and the first ``window`` generated tokens."""
    torch.manual_seed(seed)
    im = None if config is None else pv.IntervenableModel(config, model)
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=TEMPERATURE, top_k=0,
                  pad_token_id=tok.pad_token_id, eos_token_id=None)
    out = []
    for prompt in prompts:
        ids = tok(["<s> " + prompt.strip()] * SAMPLES, return_tensors="pt")["input_ids"]
        base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if im is None:
            seq = model.generate(**base, **kwargs)
        else:
            steps = "all" if window >= MAX_NEW_TOKENS else list(range(window))
            seq = im.generate(base, intervene_on_prompt=True, timesteps=steps, **kwargs)[1]
        out.append((prompt, seq, ids.shape[1]))
    return out


def measure(model, tok, gens: list, topic: str, grammar: CorpusGrammar) -> dict:
    """Fluency (the story grammar over prompt + generation), topic (the generated words name it),
    both, and the perplexity of the generated tokens under ``model`` (the unsteered model)."""
    rx = re.compile(rf"\b{topic}\b")
    texts, on_topic = [], []
    for prompt, seq, n in gens:
        for text in tok.batch_decode(seq[:, n:], skip_special_tokens=True):
            texts.append(prompt.split() + text.split())
            on_topic.append(bool(rx.search(text)))
    fluent = [grammar.check(t).valid for t in texts]
    return {**{k: v for k, v in gated_rates(on_topic, fluent).items() if k != "n"},
            "sentence_valid_rate": grammar_rates(grammar, texts)["sentence_valid_rate"],
            "perplexity": perplexity(model, [(seq, n) for _, seq, n in gens])}


def first_per_head(matches: list, n: int, min_precision: float) -> list:
    """The best code (matches are ranked by F1) of each of the first ``n`` heads with a code of
    precision >= ``min_precision``."""
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
    ``codebooks/`` into a copy), its tokenizer, and the code records. Unwraps ``model``."""
    save_codebooks(model, OUT / "codebooks")
    unwrap_codebook(model).save_pretrained(OUT / "model")
    tok.save_pretrained(OUT / "model")
    records.save_to_disk(OUT / "records")


def run_seed(seed: int, grammar: CorpusGrammar, save_app: bool) -> dict:
    t0 = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    stories, _ = make_corpus(N_STORIES + N_RECORD, seed)
    tok = make_tokenizer(stories)
    train_texts, held_out = stories[:N_STORIES], stories[N_STORIES:]
    data = encode(tok, train_texts, MODEL["n_positions"])

    # 2. the model: GPT-2's own initialisation (N(0, 0.02), scaled residual projections), seeded.
    config = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id,
                        pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **MODEL)
    model = GPT2LMHeadModel(config)
    wrap_codebook(model, ["head_attention_value_output"], seed=seed, **CODEBOOK)
    fit = train_codebook_model(model, data, seed=seed, show_progress=False, log_every=100, **TRAIN)
    model.eval()
    last = fit.history[-1]
    print(f"seed {seed}: corpus {len(stories)} stories, {len(tok)} words; trained {fit.global_step} steps in "
          f"{fit.seconds:.0f} s: LM loss {fit.history[0]['lm_loss']:.3f} -> {last['lm_loss']:.3f}, codes used "
          f"{last['codes_used']:.2f}, dead codes replaced {sum(fit.replaced.values())}", flush=True)

    # 3. record codes on held-out stories, rank each topic's codes by code search.
    records = record_codes(model, held_out, tok, batch_size=64, top_n=5)
    ranked = {t: code_search(records, rf"\b{t}\b.*", top=None, min_fires=3) for t in TOPICS}

    # 4a. validation: every setting on the validation prompts; keep the best within the fluency budget.
    sample_seed = 1000 * seed
    base_val = generate(model, tok, VAL_PROMPTS, seed=sample_seed + 1)
    validation, chosen, found = {}, {}, {}
    for topic in TOPICS:
        base = measure(model, tok, base_val, topic, grammar)
        rows = []
        for n, min_precision in itertools.product(N_CODES, MIN_PRECISIONS):
            codes = first_per_head(ranked[topic], n, min_precision)
            if len(codes) < n:
                continue  # fewer heads than n have such a code
            cfg = code_intervention_config([m.info for m in codes], mode=MODE)
            for window in WINDOWS:
                gens = generate(model, tok, VAL_PROMPTS, cfg, window, seed=sample_seed + 1)
                rows.append({"n": n, "min_precision": min_precision, "window": window,
                             **measure(model, tok, gens, topic, grammar)})
        if not rows:
            raise RuntimeError(f"code search found no code for {topic!r}")
        ok = [r for r in rows if r["fluent_rate"] >= base["fluent_rate"] - MAX_FLUENCY_DROP] or rows
        best = max(ok, key=lambda r: r["fluent_on_topic_rate"])
        chosen[topic] = {k: best[k] for k in ("n", "min_precision", "window")}
        found[topic] = first_per_head(ranked[topic], best["n"], best["min_precision"])
        validation[topic] = {"unsteered": base, "settings": rows}

    # 4b. test: the kept setting on the test prompts, fresh samples, against the unsteered model.
    base_test = generate(model, tok, PROMPTS, seed=sample_seed + 2)
    test, examples = {"unsteered": {}, "codes": {}}, {}
    for topic in TOPICS:
        cfg = code_intervention_config([m.info for m in found[topic]], mode=MODE)
        gens = generate(model, tok, PROMPTS, cfg, chosen[topic]["window"], seed=sample_seed + 2)
        test["unsteered"][topic] = measure(model, tok, base_test, topic, grammar)
        test["codes"][topic] = measure(model, tok, gens, topic, grammar)
        prompt, seq, n = gens[1]
        examples[topic] = [prompt + " " + t for t in tok.batch_decode(seq[:3, n:], skip_special_tokens=True)]
    prompt, seq, n = base_test[1]
    examples["unsteered"] = [prompt + " " + t for t in tok.batch_decode(seq[:3, n:], skip_special_tokens=True)]
    for topic in TOPICS:
        u, s = test["unsteered"][topic], test["codes"][topic]
        print(f"  {topic}: codes {[str(m.info).split(', Site')[0] for m in found[topic]]} (precision "
              f"{', '.join(f'{m.precision:.2f}' for m in found[topic])}), window {chosen[topic]['window']}: fluent on "
              f"topic {u['fluent_on_topic_rate']:.2f} -> {s['fluent_on_topic_rate']:.2f}, fluent "
              f"{u['fluent_rate']:.2f} -> {s['fluent_rate']:.2f}", flush=True)
    if save_app:
        OUT.mkdir(parents=True, exist_ok=True)
        save_for_app(model, tok, records)
    print(f"  seed {seed} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"seed": seed, "training": {"history": fit.history, "replaced": fit.replaced, "seconds": fit.seconds},
            "codes": {t: [{"code": str(m.info), "precision": m.precision, "recall": m.recall} for m in ms]
                      for t, ms in found.items()},
            "validation": validation, "chosen": chosen, "test": test, "examples": examples}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def main() -> dict:
    t0 = time.perf_counter()
    grammar = CorpusGrammar(all_sentences())
    per_seed = [run_seed(s, grammar, save_app=i == 0) for i, s in enumerate(SEEDS)]
    summary = {}
    for cond in ("unsteered", "codes"):
        summary[cond] = {}
        for k in METRICS:
            by_topic = {t: [r["test"][cond][t][k] for r in per_seed] for t in TOPICS}
            means = [statistics.fmean(r["test"][cond][t][k] for t in TOPICS) for r in per_seed]
            summary[cond][k] = {**spread(means), "per_topic": {t: spread(v) for t, v in by_topic.items()}}
    table = {}
    for t in TOPICS:
        b = [r["test"]["unsteered"][t]["fluent_on_topic_rate"] for r in per_seed]
        s = [r["test"]["codes"][t]["fluent_on_topic_rate"] for r in per_seed]
        table[t] = {"baseline": spread(b), "steered": spread(s), "rise": spread([y - x for x, y in zip(b, s)])}
    sweep = {}
    for n in N_CODES:
        for w in WINDOWS:
            rows = [row for r in per_seed for t in TOPICS for row in r["validation"][t]["settings"]
                    if row["n"] == n and row["window"] == w]
            if rows:
                sweep[f"n={n},window={w}"] = {"n": n, "window": w, "count": len(rows),
                                              **{k: statistics.fmean(row[k] for row in rows) for k in METRICS}}
    base_val = [r["validation"][t]["unsteered"] for r in per_seed for t in TOPICS]
    sweep["unsteered"] = {k: statistics.fmean(row[k] for row in base_val) for k in METRICS}
    fl = summary
    target = {t: bool(table[t]["rise"]["mean"] >= 0.10
                      and fl["codes"]["fluent_rate"]["per_topic"][t]["mean"]
                      >= fl["unsteered"]["fluent_rate"]["per_topic"][t]["mean"] - 0.15) for t in TOPICS}
    seconds = time.perf_counter() - t0

    print(f"\ntest prompts ({len(PROMPTS)} prompts x {SAMPLES} samples, {MAX_NEW_TOKENS} new tokens, temperature "
          f"{TEMPERATURE}), mean ± sd over seeds {SEEDS}; fluent = every sentence is one the story templates make")
    print("| topic | fluent on topic, unsteered | fluent on topic, codes | rise (points) | fluent, unsteered "
          "| fluent, codes | perplexity, codes | target met |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")

    def ms(d: dict, scale: float = 100, digits: int = 0) -> str:
        return f"{scale * d['mean']:.{digits}f} ± {scale * d['sd']:.{digits}f}"

    for t in TOPICS:
        pt = {c: {k: summary[c][k]["per_topic"][t] for k in METRICS} for c in summary}
        print(f"| {t} | {ms(table[t]['baseline'])} | {ms(table[t]['steered'])} | {ms(table[t]['rise'], digits=1)} "
              f"| {ms(pt['unsteered']['fluent_rate'])} | {ms(pt['codes']['fluent_rate'])} "
              f"| {ms(pt['codes']['perplexity'], 1, 2)} | {'yes' if target[t] else 'no'} |")
    print(f"unsteered perplexity {ms(summary['unsteered']['perplexity'], 1, 2)}. Not shown: that the stories "
          f"hold together beyond single sentences (names, one topic), or that any of it carries to a real model.")
    print(f"\nexamples (seed {SEEDS[0]}, prompt {PROMPTS[1]!r}):")
    for k, v in per_seed[0]["examples"].items():
        print(f"  {k}: {v[0]}")

    results = {
        "small": SMALL, "seeds": SEEDS, "seconds": round(seconds, 2), "pyvene_like": pv.__version__,
        "conditions": ["unsteered", "codes"],
        "recipe": {"model": MODEL, "codebook": CODEBOOK, "train": TRAIN, "n_stories": N_STORIES, "n_record": N_RECORD,
                   "titled": TITLED, "title": TITLE, "n_codes": list(N_CODES), "windows": list(WINDOWS),
                   "min_precisions": list(MIN_PRECISIONS), "max_fluency_drop": MAX_FLUENCY_DROP, "mode": MODE,
                   "prompts": PROMPTS, "val_prompts": VAL_PROMPTS, "samples": SAMPLES,
                   "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE},
        "summary": summary, "table": table, "sweep": sweep, "target": target, "per_seed": per_seed,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    plot(table, summary, sweep)
    print(f"\nsaved {OUT / 'results.json'}, steering.png, sweep.png and the app's files; total {seconds:.0f} s")
    return results


def plot(table: dict, summary: dict, sweep: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    width = 0.27
    bars = ((lambda t: table[t]["baseline"], "no steering: fluent and on topic"),
            (lambda t: table[t]["steered"], "codes forced: fluent and on topic"),
            (lambda t: summary["codes"]["fluent_rate"]["per_topic"][t], "codes forced: fluent"))
    for j, (value, label) in enumerate(bars):
        xs = [i + (j - 1) * width for i in range(len(TOPICS))]
        ax.bar(xs, [100 * value(t)["mean"] for t in TOPICS], width, yerr=[100 * value(t)["sd"] for t in TOPICS],
               label=label, capsize=2, **({"hatch": "//", "alpha": 0.5} if j == 2 else {}))
    ax.set_xticks(range(len(TOPICS)), TOPICS)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test generations (%)")
    ax.set_title("Topic steering with codebook features (mean ± sd over seeds)")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "steering.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for n in N_CODES:
        rows = [r for r in sweep.values() if r.get("n") == n]
        if rows:
            ax.plot([100 * r["fluent_rate"] for r in rows], [100 * r["fluent_on_topic_rate"] for r in rows], "o-",
                    label=f"{n} code(s)")
            for r in rows:
                ax.annotate(f"w={r['window']}", (100 * r["fluent_rate"], 100 * r["fluent_on_topic_rate"]), fontsize=6)
    u = sweep["unsteered"]
    ax.plot([100 * u["fluent_rate"]], [100 * u["fluent_on_topic_rate"]], "k*", markersize=10, label="unsteered")
    ax.set_xlabel("fluent generations (%)")
    ax.set_ylabel("fluent and on topic (%)")
    ax.set_title("Validation sweep: codes x window (mean over seeds, topics)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "sweep.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
    sys.exit(0)
