"""Generation benchmark: steering during HF ``generate``, plain vs hand hook vs pyvene_like vs pyvene.

Run from the repository root::

    .venv/bin/python benchmarks/generation.py        # writes benchmarks/results/generation.json
    /tmp/pvenv/bin/python benchmarks/generation.py   # the same, with pyvene 0.1.8 in the run

The tiny GPT-2 of ``run.py`` (4 layers, width 64, vocab 1000), a 1 x 16 token prompt, greedy
decoding of exactly 64 new tokens with the KV cache (EOS is switched off so every contender
generates all 64). A fixed ``[64]`` vector is added at layer 1's ``block_output``.

Cases:

* ``gen_steer_every_token`` -- the vector is added at every position the model computes
  (the prompt and every generated token). Hand hook: ``x += vec`` on every forward.
  pyvene_like: ``intervene_on_prompt=True, timesteps="all"``. pyvene cannot express it (it
  intervenes on the prompt or on later tokens, never both): its column says why.
* ``gen_steer_after_first`` -- pyvene's generation semantics: the vector is added at each new
  token's own position from the second step on, so the first generated token is never
  steered. Hand hook: ``x += vec`` when a step computes one new token. pyvene_like:
  ``intervene_on_prompt=False, timesteps=range(1, 64)``. pyvene:
  ``intervene_on_prompt=False, unit_locations={"base": 0}``.

Everything runs in one process, one thread, under ``torch.inference_mode()``. Before timing,
every contender runs once with ``output_logits=True``: pyvene_like's sequences must equal the
hand hook's and its logits match (``allclose``, atol 1e-6), or the run aborts; pyvene is timed
only if it matches too. Contenders are timed round-robin (start rotated every round), median
per contender; ratio = median / plain ``generate``'s median. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pyvene_like as pvl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: models, timing, machine info, pyvene import)
from common import HERE  # noqa: E402

CONTENDERS = ("plain", "hand_hooks", "pyvene_like", "pyvene")
TARGETS = {"gen_steer_every_token": 1.10, "gen_steer_after_first": None}
NEW_TOKENS = 64
LAYER = 1


def _main(o):
    return o[0] if isinstance(o, tuple) else o


def hand_generate(model, vec, only_new_tokens: bool):
    block = model.transformer.h[LAYER]

    def hook(module, args, output):
        x = _main(output)
        if not only_new_tokens or x.shape[1] == 1:
            x += vec

    def run(ids, **kw):
        h = block.register_forward_hook(hook)
        try:
            return model.generate(ids, **kw)
        finally:
            h.remove()

    return run


def make_case(case_id, model, ids, vec):
    kw = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
    base = {"input_ids": ids}
    every = case_id == "gen_steer_every_token"
    hand = hand_generate(model, vec, only_new_tokens=not every)
    im = pvl.IntervenableModel(pvl.RepresentationConfig(LAYER, "block_output", intervention_type="addition"), model)
    if every:
        steer = dict(intervene_on_prompt=True, timesteps="all")
    else:
        steer = dict(intervene_on_prompt=False, timesteps=range(1, NEW_TOKENS))

    def calls(extra):
        k = {**kw, **extra}
        return {
            "plain": lambda: model.generate(ids, **k),
            "hand_hooks": lambda: hand(ids, **k),
            "pyvene_like": lambda: im.generate(base, source_representations=vec, **steer, **k)[1],
        }

    def make_pyvene(extra):
        if every:
            raise NotImplementedError(
                "pyvene 0.1.8 intervenes on the prompt (intervene_on_prompt=True) or on the tokens "
                "after the first (False), never on both in one generate call"
            )
        ref = common.pv_ref.IntervenableModel(
            {"layer": LAYER, "component": "block_output", "intervention_type": common.pv_ref.AdditionIntervention},
            model,
        )
        k = {**kw, **extra}
        return lambda: ref.generate(base, unit_locations={"base": 0}, source_representations=vec,
                                    intervene_on_prompt=False, **k)[1]

    titles = {
        "gen_steer_every_token": "tiny GPT-2, 16-token prompt + 64 new tokens: addition @ L1 on every token",
        "gen_steer_after_first": "the same, pyvene's semantics: every new token's position from step 2 on",
    }
    return dict(id=case_id, title=titles[case_id], calls=calls, make_pyvene=make_pyvene,
                description=__doc__.split("Cases:")[1].split("Everything runs")[0].strip())


def _logits_equal(a, b) -> tuple[bool, float]:
    if len(a.logits) != len(b.logits) or not torch.equal(a.sequences, b.sequences):
        return False, float("inf")
    diff = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    return diff <= 1e-6, diff


def verify(case, model) -> dict:
    checked = case["calls"]({"return_dict_in_generate": True, "output_logits": True})
    out = {name: fn() for name, fn in checked.items()}
    n_new = out["plain"].sequences.shape[1] - 16
    if n_new != NEW_TOKENS:
        sys.exit(f"ABORT [{case['id']}]: plain generate made {n_new} tokens, not {NEW_TOKENS}")
    if torch.equal(out["hand_hooks"].sequences, out["plain"].sequences) and all(
        torch.equal(x, y) for x, y in zip(out["hand_hooks"].logits, out["plain"].logits)
    ):
        sys.exit(f"ABORT [{case['id']}]: the hand hook changes nothing; the case is not an intervention")
    ok, diff = _logits_equal(out["pyvene_like"], out["hand_hooks"])
    check = {"pyvene_like_vs_hand_hooks": {"equal": ok, "max_abs_logit_diff": diff}}
    if not ok:
        sys.exit(f"ABORT [{case['id']}]: pyvene_like's generation differs from the hand hook's (max abs "
                 f"logit diff {diff:g}); the benchmark would compare different computations")
    calls = case["calls"]({})
    pyvene = {"status": common.PYVENE_STATUS}
    if common.pv_ref is not None:
        try:
            logits = case["make_pyvene"]({"return_dict_in_generate": True, "output_logits": True})()
            fn = case["make_pyvene"]({})
        except Exception as e:
            pyvene = common.pyvene_error(e, "cannot express" if isinstance(e, NotImplementedError) else "error",
                                         limit=4)
        else:
            ok, diff = _logits_equal(logits, out["hand_hooks"])
            check["pyvene_vs_hand_hooks"] = {"equal": ok, "max_abs_logit_diff": diff}
            if ok:
                calls["pyvene"] = fn
                pyvene = {"status": "ok"}
            else:
                pyvene = {"status": "mismatch",
                          "error": f"pyvene differs from the hand hook (max abs logit diff {diff:g}); not timed"}
    common.abort_on_leftover_hooks(model, f"ABORT [{case['id']}]", "calls")
    check["leftover_hooks"] = 0
    return {"check": check, "pyvene": pyvene, "calls": calls}


def run_case(case, model, rounds, warmup):
    info = verify(case, model)
    calls = info["calls"]
    samples = common.time_round_robin(calls, rounds, 1, warmup)
    results = common.contender_results(CONTENDERS, common.summarize_vs_plain(samples), info["pyvene"])
    return {
        "id": case["id"], "title": case["title"], "description": case["description"],
        "shape": dict(batch=1, prompt=16, new_tokens=NEW_TOKENS, n_layer=4, n_embd=64, n_head=4, vocab=1000),
        "rounds": rounds, "warmup_rounds": warmup,
        "target_pyvene_like_ratio": TARGETS[case["id"]],
        "check": info["check"], "results": results,
    }


def markdown_table(cases) -> str:
    lines = ["| case | plain generate ms | hand hook × | pyvene_like × | pyvene × | target |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in cases:
        r = c["results"]
        t = c["target_pyvene_like_ratio"]
        lines.append(f"| {c['title']} | {r['plain']['median_ms']:.1f} | {common.fmt_ratio(r['hand_hooks'])} | "
                     f"{common.fmt_ratio(r['pyvene_like'])} | {common.fmt_ratio(r['pyvene'])} | {f'≤ {t:.2f}×' if t else '—'} |")
    lines.append("")
    for c in cases:
        ratio, t = c["results"]["pyvene_like"]["ratio"], c["target_pyvene_like_ratio"]
        verdict = "" if t is None else f" vs target ≤{t}× ({'meets' if ratio <= t else 'MISSES'})"
        lines.append(f"- {c['id']}: pyvene_like {ratio:.3f}×{verdict}; {c['rounds']} rounds")
        problem = common.pyvene_problem(c["results"]["pyvene"], f"{c['id']}: ")
        if problem:
            lines.append(problem)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "generation.json"), help="JSON output path")
    ap.add_argument("--rounds", type=int, default=80, help="timed rounds per case")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up rounds per case")
    ap.add_argument("--cases", default="gen_steer_every_token,gen_steer_after_first")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = common.build_gpt2(4, 64, 4, 1000, seed=0)
    model.generation_config.eos_token_id = None  # always 64 new tokens
    model.generation_config.pad_token_id = 0
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (1, 16))
    vec = torch.randn(64)
    cases = []
    with torch.inference_mode():
        for case_id in args.cases.split(","):
            case = make_case(case_id, model, ids, vec)
            cases.append(run_case(case, model, args.rounds, args.warmup))
            print(f"[{time.perf_counter() - t0:6.1f}s] {case_id} done", file=sys.stderr)
    result = {
        "benchmark": "generation",
        "machine": common.machine_info(),
        "settings": {
            "threads": 1, "grad_mode": "torch.inference_mode()", "decoding": "greedy, use_cache=True",
            "new_tokens": NEW_TOKENS, "prompt": "1 x 16", "rounds": args.rounds, "warmup_rounds": args.warmup,
            "timing": "round-robin, start rotated each round; one generate call per sample; "
                      "ratio = median / plain generate median",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        "cases": cases,
    }
    out = common.write_json(args.out, result)
    print(markdown_table(cases))
    print(common.machine_line(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
