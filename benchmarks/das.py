"""DAS training-step benchmark: hand-written hooks vs pyvene_like vs pyvene (when importable).

Run from the repository root::

    .venv/bin/python benchmarks/das.py             # writes benchmarks/results/das.json
    /tmp/pvenv/bin/python benchmarks/das.py        # the same, with pyvene 0.1.8 in the run
    .venv/bin/python benchmarks/das.py --profile   # also cProfiles pyvene_like's step

One step of distributed alignment search (DAS) on the tiny GPT-2 of ``run.py`` (4 layers,
width 64), batch 32 x 16 tokens: a rotation of layer 2's ``block_output`` at the last
position, interchanging the first 32 rotated dims from a source. A step is the source pass,
the base pass with the intervention, cross-entropy of the last position's logits against
fixed random labels, backward, and an Adam step on the rotation (the model is frozen).

Contenders, all in one process, single-threaded, with grad mode on (training cannot run
under ``inference_mode``), timed round-robin with the starting contender rotated each round:

* ``plain`` -- one plain base forward and the loss: no intervention, no backward (a scale).
* ``hand_hooks`` -- hand-written torch hooks: a forward hook keeps the source's unit during a
  full source forward (no grad), a second one rewrites the base's unit with the rotation.
  This is the reference of the targets.
* ``hand_hooks_stop`` -- the same, but the source forward is stopped (by an exception) right
  after the hooked layer, as pyvene_like does; for information.
* ``pyvene_like`` -- ``im(base, [source], {"sources->base": pos}, subspaces=...)``.
* ``pyvene`` -- pyvene 0.1.8's ``RotatedSpaceIntervention``, the same call (when importable).
* ``pyvene_like_cached`` -- the source's units collected once beforehand (no grad, with
  ``im.collect_source_representations``) and passed as ``source_representations``: every
  epoch after the first costs this.

Every contender has its own rotation, all starting from the same weights, and its own
optimiser. Before any timing, one step's loss and rotation gradient are computed for each and
pyvene_like's (and the cached path's) must match the hand-written step's (``allclose``) or
the run aborts. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

import pyvene_like as pvl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: models, timing, machine info, pyvene import)
from common import HERE, pv_ref  # noqa: E402

LAYER, POS, K = 2, 15, 32  # layer 2 block_output, last position, first 32 rotated dims
BATCH, SEQ = 32, 16
LR = 1e-3
CONTENDERS = ("plain", "hand_hooks", "hand_hooks_stop", "pyvene_like", "pyvene", "pyvene_like_cached")
REFERENCE = "hand_hooks"
TARGETS = {"pyvene_like": 1.1, "pyvene_like_cached": 1.0}  # ratio to the hand-written step
RTOL, ATOL = 1e-4, 1e-6  # loss and gradient agreement (different but equivalent float32 maths)


class _Stop(Exception):
    """Raised by the hand-written source hook to end the source forward early."""


class Rotation(nn.Module):
    """The hand-written rotation: ``x @ weight`` with a ``[n, n]`` weight (made orthogonal by
    torch's parametrization, as in pyvene and pyvene_like)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))
        nn.init.orthogonal_(self.weight)

    def forward(self, x):
        return x @ self.weight


def hand_rotation(n: int) -> nn.Module:
    return orthogonal(Rotation(n))


def trainable(rot: nn.Module) -> nn.Parameter:
    return rot.parametrizations.weight.original


# -- contenders: each is (forward() -> loss, the trainable parameter) --------------------------
def hand_das(model, rot, base, src, labels, stop_early: bool):
    """Hand-written DAS: keep the source unit, then rotate, swap K dims, rotate back."""
    block = model.transformer.h[LAYER]

    def forward():
        cache = {}

        def keep(module, args, out):
            cache["src"] = out[:, POS]
            if stop_early:
                raise _Stop

        h = block.register_forward_hook(keep)
        try:
            with torch.no_grad():
                model(**src)
        except _Stop:
            pass
        finally:
            h.remove()

        def write(module, args, out):
            R = rot.weight  # the orthogonal matrix, computed once per step
            rb, rs = out[:, POS] @ R, cache["src"] @ R
            new = out.clone()
            new[:, POS] = torch.cat([rs[:, :K], rb[:, K:]], dim=-1) @ R.T
            return new

        h = block.register_forward_hook(write)
        try:
            logits = model(**base).logits
        finally:
            h.remove()
        return F.cross_entropy(logits[:, -1], labels)

    return forward


def make_contenders(model, base, src, labels):
    rep = pvl.RepresentationConfig(LAYER, "block_output", intervention_type="rotated_space")
    im = pvl.IntervenableModel(rep, model)
    # Every rotation starts from these weights (a copy: the optimiser later moves im's own).
    state = {k: v.clone() for k, v in im.interventions[0].rotate_layer.state_dict().items()}
    subspaces = [[list(range(K))] * BATCH]

    def pvl_forward():
        _, out = im(base, [src], {"sources->base": POS}, subspaces=subspaces)
        return F.cross_entropy(out.logits[:, -1], labels)

    # Cached sources: the units collected once, without grad, as an epoch loop would, with
    # the library's own call for it; a collect intervention must see the same values.
    im_cached = pvl.IntervenableModel(rep, model)
    im_cached.interventions[0].rotate_layer.load_state_dict(state)
    with torch.no_grad():
        (cached,) = im_cached.collect_source_representations([src], {"sources->base": POS})
        collector = pvl.IntervenableModel(
            pvl.RepresentationConfig(LAYER, "block_output", intervention_type="collect"), model
        )
        (_, collected), _ = collector(src, unit_locations={"base": POS})
    if not torch.equal(cached, collected[0]):
        sys.exit("ABORT: collect_source_representations differs from a collect intervention")

    def cached_forward():
        _, out = im_cached(base, unit_locations={"base": POS}, source_representations=cached,
                           subspaces=subspaces)
        return F.cross_entropy(out.logits[:, -1], labels)

    def plain_forward():
        return F.cross_entropy(model(**base).logits[:, -1], labels)

    contenders = {"plain": (plain_forward, None)}
    for name, stop in (("hand_hooks", False), ("hand_hooks_stop", True)):
        rot = hand_rotation(model.config.n_embd)
        rot.load_state_dict(state)
        contenders[name] = (hand_das(model, rot, base, src, labels, stop), trainable(rot))
    contenders["pyvene_like"] = (pvl_forward, trainable(im.interventions[0].rotate_layer))
    contenders["pyvene_like_cached"] = (cached_forward, trainable(im_cached.interventions[0].rotate_layer))

    def make_pyvene():
        ref = pv_ref.IntervenableModel(
            {"layer": LAYER, "component": "block_output",
             "intervention_type": pv_ref.RotatedSpaceIntervention},
            model,
        )
        ref.disable_model_gradients()
        (iv,) = ref.interventions.values()
        iv.rotate_layer.load_state_dict(state)
        params = ref.get_trainable_parameters()
        if len(params) != 1 or params[0] is not trainable(iv.rotate_layer):
            raise RuntimeError(f"expected the rotation as the only trainable parameter, got {len(params)}")

        def forward():
            _, out = ref(base, [src], {"sources->base": POS}, subspaces=subspaces)
            return F.cross_entropy(out.logits[:, -1], labels)

        return forward, params[0]

    return contenders, make_pyvene


def as_step(forward, param):
    """One training step: forward, backward, Adam on the rotation (or a plain forward)."""
    if param is None:
        return forward
    opt = torch.optim.Adam([param], lr=LR)

    def step():
        loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


# -- checks ---------------------------------------------------------------------------------
def _loss_and_grad(forward, param):
    t0 = time.perf_counter()
    loss = forward()
    (grad,) = torch.autograd.grad(loss, [param])
    return loss.detach(), grad, time.perf_counter() - t0


def _agree(a, b) -> tuple[bool, float]:
    diff = (a - b).abs().max().item()
    return bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL)), diff


def verify(model, contenders, make_pyvene) -> dict:
    """Loss and rotation gradient of one step for each contender, from the same weights.

    Aborts if pyvene_like (or the cached path, or hand_hooks_stop) disagrees with the
    hand-written step, if the intervention does not change the loss, or if a hook is left
    on the model. pyvene is dropped from the timing (with the reason) if it fails or differs.
    """
    first_s, check = {}, {}
    t0 = time.perf_counter()
    plain_loss = contenders["plain"][0]().detach()
    first_s["plain"] = time.perf_counter() - t0
    ref_loss, ref_grad, first_s[REFERENCE] = _loss_and_grad(*contenders[REFERENCE])
    if torch.equal(ref_loss, plain_loss):
        sys.exit("ABORT: the hand-written intervention does not change the loss")
    if not ref_grad.abs().max() > 0:
        sys.exit("ABORT: the hand-written step's rotation gradient is zero")
    check["hand_hooks_loss"] = ref_loss.item()
    check["plain_loss"] = plain_loss.item()

    def compare(name, loss, grad):
        ok_l, d_l = _agree(loss, ref_loss)
        ok_g, d_g = _agree(grad, ref_grad)
        check[f"{name}_vs_hand_hooks"] = {"loss_max_abs_diff": d_l, "grad_max_abs_diff": d_g,
                                          "allclose": ok_l and ok_g}
        return ok_l and ok_g

    for name in ("hand_hooks_stop", "pyvene_like", "pyvene_like_cached"):
        loss, grad, first_s[name] = _loss_and_grad(*contenders[name])
        if not compare(name, loss, grad):
            sys.exit(f"ABORT: {name}'s loss/gradient differ from the hand-written step's: "
                     f"{check[f'{name}_vs_hand_hooks']}")
        if name == "pyvene_like":
            pvl_loss = loss
        if name == "pyvene_like_cached":
            ok, diff = _agree(loss, pvl_loss)
            check["cached_vs_uncached_loss"] = {"equal": bool(torch.equal(loss, pvl_loss)),
                                                "max_abs_diff": diff}
            if not ok:
                sys.exit(f"ABORT: the cached path's loss differs from the uncached one by {diff:g}")

    pyvene = {"status": common.PYVENE_STATUS}
    if pv_ref is not None:
        try:
            forward, param = make_pyvene()
            loss, grad, first = _loss_and_grad(forward, param)
        except Exception as e:
            pyvene = common.pyvene_error(e)
        else:
            if compare("pyvene", loss, grad):
                contenders["pyvene"] = (forward, param)
                first_s["pyvene"] = first
                pyvene = {"status": "ok"}
            else:
                pyvene = {"status": "mismatch",
                          "error": f"pyvene's loss/gradient differ from the hand-written step's "
                                   f"({check['pyvene_vs_hand_hooks']}); not timed"}
    common.abort_on_leftover_hooks(model, "ABORT", "checks")
    check["leftover_hooks"] = 0
    check["tolerance"] = {"rtol": RTOL, "atol": ATOL}
    return {"check": check, "pyvene": pyvene, "first_call_s": first_s}


# -- timing ---------------------------------------------------------------------------------
def time_training_steps(steps: dict, rounds: int, inner: int, warmup_rounds: int) -> dict:
    """Round-robin timing of training steps (grad mode on, never under inference_mode)."""
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        raise RuntimeError("training steps must be timed with grad mode on, outside inference_mode")
    return common.time_round_robin(steps, rounds, inner, warmup_rounds)


def summarize(samples: dict) -> dict:
    ref, plain = samples[REFERENCE], samples["plain"]
    med_ref, med_plain = statistics.median(ref), statistics.median(plain)
    res = {}
    for name, xs in samples.items():
        res[name] = {
            **common.spread(xs),
            "ratio_to_hand_hooks": statistics.median(xs) / med_ref,
            "paired_ratio_to_hand_hooks_median": common.paired_ratio_median(xs, ref),
            "ratio_to_plain_forward": statistics.median(xs) / med_plain,
            "n": len(xs),
        }
    return res


# -- reporting ------------------------------------------------------------------------------
def markdown_table(result) -> str:
    r = result["results"]
    head = ["plain fwd", "hand hooks", "hand, source stopped", "pyvene_like", "pyvene 0.1.8",
            "pyvene_like, cached sources"]
    keys = ["plain", "hand_hooks", "hand_hooks_stop", "pyvene_like", "pyvene", "pyvene_like_cached"]
    lines = [
        "| | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
        "| median ms | " + " | ".join(f"{r[k]['median_ms']:.2f}" if "median_ms" in r[k] else "–" for k in keys) + " |",
        "| ÷ hand hooks | " + " | ".join(common.fmt_ratio(r[k], "ratio_to_hand_hooks") for k in keys) + " |",
        "| ÷ plain forward | " + " | ".join(common.fmt_ratio(r[k], "ratio_to_plain_forward") for k in keys) + " |",
        "",
    ]
    for name, target in TARGETS.items():
        ratio = r[name]["ratio_to_hand_hooks"]
        verdict = "meets" if ratio <= target else "MISSES"
        op = "≤" if name == "pyvene_like" else "<"
        lines.append(f"- {name}: {ratio:.2f}× the hand-written step vs target {op} {target}× ({verdict})")
    problem = common.pyvene_problem(r["pyvene"], "")
    if problem:
        lines.append(problem)
    lines.append(f"- {result['rounds']} rounds × {result['steps_per_sample']} steps, "
                 f"{result['warmup_rounds']} warm-up rounds")
    return "\n".join(lines)


def profile_step(step, n_steps: int, top: int) -> str:
    rows, total = common.profile_rows(step, 20, n_steps)
    out = [f"cProfile, {n_steps} pyvene_like DAS steps, {total * 1e3 / n_steps:.3f} ms/step "
           f"under the profiler", "",
           f"{'self us/step':>12} {'cum us/step':>12} {'calls/step':>10}  function"]
    out += [common.profile_line(row, n_steps) for row in rows[:top]]
    own = common.own_rows(rows)
    out += ["", f"pyvene_like's own Python: {sum(r[0] for r in own) * 1e6 / n_steps:.1f} us/step "
                f"self time under the profiler"]
    out += [common.profile_line(row, n_steps) for row in own[:top]]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "das.json"), help="JSON output path")
    ap.add_argument("--rounds", type=int, default=120, help="timed rounds")
    ap.add_argument("--inner", type=int, default=2, help="steps per timed sample")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up rounds")
    ap.add_argument("--profile", action="store_true", help="cProfile pyvene_like's step")
    ap.add_argument("--profile-steps", type=int, default=300)
    ap.add_argument("--note", default=None, help="a free-text note stored in the JSON (e.g. machine load)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model = common.build_gpt2(4, 64, 4, 1000, seed=0)
    model.requires_grad_(False)
    torch.manual_seed(4)
    vocab = model.config.vocab_size
    base = {"input_ids": torch.randint(0, vocab, (BATCH, SEQ))}
    src = {"input_ids": torch.randint(0, vocab, (BATCH, SEQ))}
    labels = torch.randint(0, vocab, (BATCH,))

    contenders, make_pyvene = make_contenders(model, base, src, labels)
    info = verify(model, contenders, make_pyvene)
    steps = {name: as_step(*contenders[name]) for name in CONTENDERS if name in contenders}
    load_before = _loadavg()
    samples = time_training_steps(steps, args.rounds, args.inner, args.warmup)
    load_after = _loadavg()
    if common.leftover_hooks(model):
        sys.exit("ABORT: hooks left on the model after the timed steps")
    results = common.contender_results(CONTENDERS, summarize(samples), info["pyvene"])
    profile = None
    if args.profile:
        profile = profile_step(steps["pyvene_like"], args.profile_steps, 30)

    result = {
        "benchmark": "das_training_step",
        "machine": common.machine_info(),
        "load_average_1m_before_after": [load_before, load_after],
        "note": args.note,
        "settings": {
            "threads": 1,
            "grad_mode": "torch.enable_grad() (training steps; never inference_mode)",
            "timing": "round-robin, start rotated each round; per-contender median of per-step ms; "
                      "ratio_to_hand_hooks = median / hand_hooks median; paired ratio = median of "
                      "per-round ratios",
            "model": "GPT2LMHeadModel(4 layers, width 64, 4 heads, vocab 1000), seeded, eval(), frozen",
            "shape": {"batch": BATCH, "seq": SEQ},
            "intervention": f"rotated_space at layer {LAYER} block_output, position {POS}, first {K} "
                            f"rotated dims via subspaces",
            "step": "source pass + base pass with intervention + cross_entropy(logits[:, -1], labels) "
                    f"+ backward + Adam(lr={LR}) on the rotation",
        },
        "rounds": args.rounds,
        "steps_per_sample": args.inner,
        "warmup_rounds": args.warmup,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "targets_ratio_to_hand_hooks": TARGETS,
        "first_call_s": info["first_call_s"],
        "check": info["check"],
        "results": results,
    }
    if profile is not None:
        result["profile_pyvene_like_step"] = profile.splitlines()
    out = common.write_json(args.out, result)
    print(markdown_table(result))
    print(common.machine_line(result, out, f"load avg {load_before} -> {load_after}; "))
    if profile is not None:
        print("\n" + profile)
    return 0


def _loadavg():
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
