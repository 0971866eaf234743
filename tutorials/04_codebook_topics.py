"""Codebook features: train a tiny story model with codebooks, find topic codes, steer it.

Run: ``python tutorials/04_codebook_topics.py``; ``TUTORIAL_SMALL=1`` gives the CI-sized run of
the same steps. This is the codebook paper's topic-steering tutorial (Tamkin, Taufeeque and
Goodman, 2023) on a model small enough to train here:

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
   that read the word, which steer less: two of the four topics then miss the target);
4. steering: the topic's codes forced at every position (prompt and generated tokens) with a
   :class:`~pyvene_like.CodebookIntervention`; 4 prompts x 10 samples per topic, with and
   without steering; the table of the fraction of generations that mention the topic;
5. results as JSON and a plot in ``tutorial_outputs/04_codebook_topics/``.
"""

from __future__ import annotations

import json
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
from pyvene_like.codebook import (
    code_intervention_config,
    code_search,
    record_codes,
    save_codebooks,
    train_codebook_model,
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
CODES_PER_TOPIC = 4  # the best code of code search in each of (up to) four heads
PROMPTS = ["", "once upon a time ,", "once there was a", "a long time ago ,"]
SAMPLES = 10
MAX_NEW_TOKENS = 40
TOPICS = ["dragon", "flower", "fire", "baby"]  # measured; the others are there to be avoided

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
def generate(model, tok, prompt: str, im=None) -> list[str]:
    ids = tok(["<s> " + prompt.strip()] * SAMPLES, return_tensors="pt")["input_ids"]
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=1.0, top_k=0,
                  pad_token_id=tok.pad_token_id, eos_token_id=None)
    if im is None:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    else:
        _, out = im.generate({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, timesteps="all", **kwargs)
    return tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def mentions(texts: list[str], topic: str) -> float:
    rx = re.compile(rf"\b{topic}\b")
    return sum(bool(rx.search(t)) for t in texts) / len(texts)


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
    print(f"trained {fit.global_step} steps in {fit.seconds:.1f} s: LM loss {fit.history[0]['lm_loss']:.3f} -> "
          f"{last['lm_loss']:.3f}, reconstruction {last['reconstruction_loss']:.3f}, codes used "
          f"{last['codes_used']:.2f}, dead codes replaced {sum(fit.replaced.values())}")
    OUT.mkdir(parents=True, exist_ok=True)
    save_codebooks(model, OUT / "codebooks")

    # 3. record codes on held-out stories, search each topic's codes.
    records = record_codes(model, held_out, tok, batch_size=64, top_n=5)
    found = {}
    for topic in TOPICS:
        matches = code_search(records, rf"\b{topic}\b.*", top=None, min_fires=3)
        chosen, heads = [], set()
        for m in matches:  # best F1 first; one code per head
            if m.info.head not in heads:
                chosen.append(m)
                heads.add(m.info.head)
            if len(chosen) == CODES_PER_TOPIC:
                break
        found[topic] = chosen
        print(f"\ncodes for {topic!r}:")
        for m in chosen:
            row = records.codes[(m.info.head or 0) * CODEBOOK["num_codes"] + m.info.code]
            print(f"  {m.info}  precision {m.precision:.2f} recall {m.recall:.2f}  e.g. {row['top_contexts'][0]!r}")

    # 4. generate: baseline (codebooks, no forcing) and steered, 4 prompts x 10 samples.
    torch.manual_seed(SEED + 1)
    baseline_texts = {p: generate(model, tok, p) for p in PROMPTS}
    table, examples = {}, {}
    for topic in TOPICS:
        im = pv.IntervenableModel(code_intervention_config([m.info for m in found[topic]]), model)
        steered = {p: generate(model, tok, p, im) for p in PROMPTS}
        base_rate = sum(mentions(baseline_texts[p], topic) for p in PROMPTS) / len(PROMPTS)
        steer_rate = sum(mentions(steered[p], topic) for p in PROMPTS) / len(PROMPTS)
        table[topic] = {"baseline": base_rate, "steered": steer_rate,
                        "per_prompt": {p: {"baseline": mentions(baseline_texts[p], topic),
                                           "steered": mentions(steered[p], topic)} for p in PROMPTS}}
        examples[topic] = steered[PROMPTS[1]][:3]
    seconds = time.perf_counter() - t0

    print("\nexample of an unsteered story:", baseline_texts[PROMPTS[1]][0])
    for topic in TOPICS:
        print(f"steered to {topic!r}:", examples[topic][0])
    print(f"\nfraction of generations mentioning the topic ({len(PROMPTS)} prompts x {SAMPLES} samples, "
          f"{MAX_NEW_TOKENS} new tokens)")
    print("| topic | baseline (%) | steered (%) | rise (points) |")
    print("|---|---:|---:|---:|")
    for topic, row in table.items():
        print(f"| {topic} | {100 * row['baseline']:.1f} | {100 * row['steered']:.1f} | "
              f"{100 * (row['steered'] - row['baseline']):+.1f} |")

    results = {
        "small": SMALL, "seconds": round(seconds, 2), "train_seconds": round(t_train, 2),
        "pyvene_like": pv.__version__,
        "recipe": {"model": MODEL, "codebook": CODEBOOK, "train": TRAIN, "n_stories": N_STORIES,
                   "n_record": N_RECORD, "codes_per_topic": CODES_PER_TOPIC, "prompts": PROMPTS,
                   "samples": SAMPLES, "max_new_tokens": MAX_NEW_TOKENS},
        "training": {"history": fit.history, "replaced": fit.replaced},
        "codes": {t: [{"code": str(m.info), "precision": m.precision, "recall": m.recall} for m in ms]
                  for t, ms in found.items()},
        "table": table, "examples": examples,
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    plot(table)
    print(f"\nsaved {OUT / 'results.json'}, {OUT / 'steering.png'} and the codebooks in {OUT / 'codebooks'}; "
          f"total {seconds:.1f} s")
    if not SMALL:
        worst = min(r["steered"] - r["baseline"] for r in table.values())
        print(f"smallest rise over baseline: {100 * worst:+.1f} points (target +40)")
    return results


def plot(table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = list(table)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for j, (key, label) in enumerate((("baseline", "no steering"), ("steered", "topic codes forced"))):
        xs = [i + (j - 0.5) * width for i in range(len(topics))]
        ax.bar(xs, [100 * table[t][key] for t in topics], width, label=label)
    ax.set_xticks(range(len(topics)), topics)
    ax.set_ylim(0, 100)
    ax.set_ylabel("generations mentioning topic (%)")
    ax.set_title("Topic steering with codebook features")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(OUT / "steering.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
    sys.exit(0)
