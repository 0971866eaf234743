"""Distributed Alignment Search on hierarchical equality (Geiger et al. 2023), end to end.

Run: ``python tutorials/02_das_equality.py`` (this is ``make demo``); ``TUTORIAL_SMALL=1``
gives the CI-sized run of the same steps (one seed, the main setting only, smaller held-out
sets).

The task: four entity vectors W, X, Y, Z (4 numbers each); the label says whether
"W equals X" and "Y equals Z" are both true or both false. The high-level algorithm computes
two booleans, WX and YZ, and compares them. Does a small MLP trained on the task compute
them too, and where? DAS learns a rotation of a hidden layer in which one k-dim subspace
behaves as WX and another as YZ under interchange interventions.

A fair test needs a site whose units are *mixed*: if every unit read one input pair,
grouping units by their inputs would align the variables without any rotation (that is what
the old recipe, a first-layer L1 penalty, did to the first layer). So:

* main setting (checked): the MLP is trained plainly (no penalty), and DAS works at the
  second hidden layer's pre-activations (the output of its Linear, before the ReLU; the
  module path ``"layers[{layer}].0.output"``): every unit there is a weighted sum of all
  first-layer units, and most of them depend on both input pairs (``mixed_units``
  measures this);
* ``old_recipe`` (full run only, 3 seeds, reported as measured): the old network (first-layer
  L1 after 30 % of the steps) at its first layer's output, where units read one pair each and
  grouped units do as well as DAS. It is there to show the grouped-unit baseline is strong
  where the structure is unit-aligned.

Per seed:

1. train the MLP to >= 0.99 held-out accuracy;
2. score every unit of the site by which pair it depends on: resample W and X (or Y and Z)
   from other inputs and average how far the unit moves; for the first layer also the share
   of its absolute incoming weight on W and X;
3. choose settings on a validation counterfactual set, never on the test set: the subspace
   size k for DAS, and k and the unit score for the grouped-unit baseline, each from
   ``K_CANDIDATES`` (2k < the width, so "both" never swaps the whole layer);
4. report held-out test IIA for DAS and the baselines:

   * ``grouped_neurons``: the k units that depend most on W/X stand for WX, the k that
     depend most on Y/Z for YZ; the same interchanges, no rotation;
   * ``neuron_halves``: the fixed split of units 0:16 / 16:32 (the old baseline; its "both"
     swaps the whole layer, so it equals the factual accuracy by construction);
   * ``do_nothing``: no intervention at all, the model's own prediction on the base scored
     against the counterfactual label (the floor: about 0.5 for WX and YZ).

"both" interchanges the WX and YZ subspaces together: 2k of the site's 32 dims. It measures
whether those 2k dims carry everything the rest of the network reads from the layer (DAS
finds such a subspace; grouped units often do not), not whether WX and YZ are separated: a
single variable is tested by the WX and YZ columns alone.

``results.json`` keys (in ``tutorial_outputs/02_das_equality/``):

* ``small``, ``recipe`` (all settings, ``k_candidates``), ``l1``, ``layer``, ``component``, ``seeds``;
* ``runs``: one row per seed: ``seed``, ``factual_accuracy``, ``mixed_units`` (share of the
  layer's units whose W/X share of dependence is in 0.2..0.8), ``selected`` (``das_k``,
  ``grouped`` = ``{"score", "k"}``), ``validation`` (validation IIA of every candidate),
  ``das`` ``{WX, YZ, both}``, ``baselines`` ``{grouped_neurons, neuron_halves, do_nothing}``
  each ``{WX, YZ, both}``, ``das_train_loss``, ``sources_cached``, ``seconds``;
* ``das`` and ``baselines[name]``: ``per_seed`` (the list of ``{WX, YZ, both}``, seed order)
  and ``summary`` ``{id: {mean, sd, min, max}}``;
* ``margin``: per seed, DAS minus the best baseline on WX and YZ (``per_seed``, ``summary``);
* ``checks``: the targets (factual accuracy >= 0.99, DAS >= 0.95 on WX and YZ on every seed,
  every baseline at least ``MARGIN`` below DAS on WX and YZ on every seed) and whether each held;
* ``old_recipe`` (full run only): the same keys (``l1``, ``layer``, ``component``, ``seeds``,
  ``runs``, ``das``, ``baselines``, ``margin``, ``checks``) for the old network.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pyvene_like as pv

SMALL = os.environ.get("TUTORIAL_SMALL") == "1"
OUT = Path(os.environ.get("TUTORIAL_OUTPUT_DIR", "tutorial_outputs")) / "02_das_equality"
# Tiny matrices: one thread is as fast as two, and it does not spin-wait when the CPU is shared.
torch.set_num_threads(1)

# The recipe. TUTORIAL_SMALL runs the same steps on one seed with smaller held-out sets.
SEEDS = [0] if SMALL else [0, 1, 2, 3, 4]
HIDDEN = 32
FACTUAL = dict(n_train=60_000, epochs=30, batch_size=1024, lr=1e-2, l1_start=0.3)
# Where DAS works. "main" (reported first, checked): the plain network (no L1) at the second
# hidden layer's pre-activations, the output of its Linear before the ReLU, a module path
# ("layers[{layer}].0.output", {layer} filled in by the library). "old_recipe" (full run only, 3
# seeds, reported as measured): the old first-layer L1 network at its first layer's output.
PRE_ACTIVATION = "layers[{layer}].0.output"
SETTINGS = {
    "main": dict(l1=0.0, layer=1, component=PRE_ACTIVATION, seeds=SEEDS),
    "old_recipe": dict(l1=3e-3, layer=0, component="block_output", seeds=SEEDS[:3]),
}
DAS = dict(n_train=40_000, epochs=6, batch_size=256, lr=2e-2, scheduler="cosine")
K_CANDIDATES = [8, 12]  # subspace sizes tried on the validation set (2k < HIDDEN)
N_VAL = 2_000 if SMALL else 4_000
N_TEST = 3_000 if SMALL else 12_000
MARGIN = 0.1  # DAS must beat every baseline by this much on WX and YZ
IDS = {0: ["WX"], 1: ["YZ"], 2: ["WX", "YZ"]}
NAMES = {0: "WX", 1: "YZ", 2: "both"}
SUBSPACES = {0: [0], 1: [1], 2: [0, 1]}  # partition 0 = WX, 1 = YZ
BASELINES = ("grouped_neurons", "neuron_halves", "do_nothing")


class MLP(nn.Module):
    """Three ReLU layers and a 2-way head, Kaiming-initialised on purpose (transformers 5
    gives classes without their own initialiser N(0, 0.02) weights, which train badly)."""

    def __init__(self, d_in: int = 16, hidden: int = HIDDEN, n_layer: int = 3):
        super().__init__()
        dims = [d_in] + [hidden] * n_layer
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(hidden, 2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def hidden(self, x, layer: int, component: str):
        """The activations at a site of :data:`SETTINGS` (the engine reads the same tensor)."""
        for block in self.layers[:layer]:
            x = block(x)
        return self.layers[layer][0](x) if component == PRE_ACTIVATION else self.layers[layer](x)


def train_mlp(causal, seed: int, l1: float) -> tuple[MLP, float]:
    torch.manual_seed(seed)
    train = pv.generate_factual_dataset(causal, FACTUAL["n_train"], seed=1000 + seed)[:]
    test = pv.generate_factual_dataset(causal, 10_000, seed=2000 + seed)[:]
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=FACTUAL["lr"], weight_decay=0.0)
    steps = FACTUAL["epochs"] * -(-len(train["labels"]) // FACTUAL["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    first = model.layers[0][0].weight
    x, y = train["input_ids"], train["labels"]
    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(FACTUAL["epochs"]):
        for idx in torch.randperm(len(y), generator=g).split(FACTUAL["batch_size"]):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if l1 and step >= FACTUAL["l1_start"] * steps:
                loss = loss + l1 * first.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    model.eval()
    with torch.no_grad():
        acc = (model(test["input_ids"]).argmax(-1) == test["labels"]).float().mean().item()
    return model, acc


@torch.no_grad()
def unit_scores(model: MLP, causal, seed: int, layer: int, component: str) -> dict[str, torch.Tensor]:
    """Per unit of the site, the share of its dependence that is on W/X (1 = only W/X, 0 = only Y/Z).

    ``activation``: resample W and X (or Y and Z) from other inputs and average how far the
    unit moves. ``weight`` (first layer only): the share of the unit's absolute incoming
    weight on the 8 W/X inputs.
    """
    x = pv.generate_factual_dataset(causal, 4_000, seed=5000 + seed)[:]["input_ids"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    h = model.hidden(x, layer, component)
    moved = []
    for cols in (slice(0, 8), slice(8, 16)):
        x2 = x.clone()
        x2[:, cols] = x[perm, cols]
        moved.append((model.hidden(x2, layer, component) - h).abs().mean(0))
    scores = {"activation": moved[0] / (moved[0] + moved[1]).clamp_min(1e-12)}
    if layer == 0:
        w = model.layers[0][0].weight.abs()
        scores["weight"] = w[:, :8].sum(1) / w.sum(1)
    return scores


def grouped_subspaces(score: torch.Tensor, k: int) -> dict[int, list[int]]:
    order = score.argsort(descending=True).tolist()
    wx, yz = sorted(order[:k]), sorted(order[-k:])
    return {0: wx, 1: yz, 2: sorted(wx + yz)}


def neuron_iia(model, layer: int, component: str, data, subspaces) -> dict:
    """Interchanges on the unrotated units: ids without a partition are unit indices."""
    rep = pv.RepresentationConfig(layer, component, intervention_type="vanilla")
    return pv.evaluate(pv.IntervenableModel(rep, model), data, subspaces=subspaces, id_names=NAMES).iia_per_id


@torch.no_grad()
def do_nothing_iia(model, data) -> dict:
    cols = data[:]
    hit = (model(cols["input_ids"]).argmax(-1) == cols["labels"]).float()
    return {name: hit[cols["intervention_id"] == i].mean().item() for i, name in NAMES.items()}


def train_das(model, layer: int, component: str, train, seed: int, k: int):
    torch.manual_seed(seed)
    rep = pv.RepresentationConfig(layer, component, intervention_type="rotated_space",
                                  subspace_partition=[[0, k], [k, 2 * k]])
    trainer = pv.Trainer(
        pv.IntervenableModel(rep, model), train, subspaces=SUBSPACES, epochs=DAS["epochs"],
        batch_size=DAS["batch_size"], lr=DAS["lr"], optimizer=torch.optim.Adam, scheduler=DAS["scheduler"],
        id_names=NAMES, seed=seed, show_progress=False,
    )
    return trainer, trainer.train()


def pair_score(iia: dict) -> float:
    """What selection maximises: the mean of WX and YZ ("both" is not a single variable)."""
    return (iia["WX"] + iia["YZ"]) / 2


def rounded(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}


def run_seed(causal, seed: int, l1: float, layer: int, component: str) -> dict:
    t0 = time.perf_counter()
    model, factual = train_mlp(causal, seed, l1)
    t_mlp = time.perf_counter() - t0
    train = pv.generate_counterfactual_dataset(causal, DAS["n_train"], IDS, seed=3000 + seed)
    val = pv.generate_counterfactual_dataset(causal, N_VAL, IDS, seed=6000 + seed)
    test = pv.generate_counterfactual_dataset(causal, N_TEST, IDS, seed=4000 + seed)

    # Grouped units: every (score, k) on the validation set; the best one on the test set.
    scores = unit_scores(model, causal, seed, layer, component)
    validation = {"grouped": {}, "das": {}}
    for name, score in scores.items():
        for k in K_CANDIDATES:
            validation["grouped"][f"{name}/k={k}"] = rounded(neuron_iia(model, layer, component, val, grouped_subspaces(score, k)))
    best_group = max(validation["grouped"], key=lambda c: pair_score(validation["grouped"][c]))
    g_name, g_k = best_group.split("/k=")
    grouped = neuron_iia(model, layer, component, test, grouped_subspaces(scores[g_name], int(g_k)))
    half = HIDDEN // 2
    halves = neuron_iia(model, layer, component, test, {0: list(range(half)), 1: list(range(half, HIDDEN)), 2: list(range(HIDDEN))})

    # DAS: one rotation per k, chosen on the validation set.
    fits = {}
    for k in K_CANDIDATES:
        trainer, fit = train_das(model, layer, component, train, seed, k)
        fits[k] = (trainer, fit)
        validation["das"][f"k={k}"] = rounded(trainer.evaluate(val, factual=False).iia_per_id)
    das_k = max(K_CANDIDATES, key=lambda k: pair_score(validation["das"][f"k={k}"]))
    trainer, fit = fits[das_k]
    das = trainer.evaluate(test, factual=False).iia_per_id
    t_das = time.perf_counter() - t0 - t_mlp

    mixed = ((scores["activation"] > 0.2) & (scores["activation"] < 0.8)).float().mean().item()
    return {
        "seed": seed,
        "factual_accuracy": factual,
        "mixed_units": mixed,
        "selected": {"das_k": das_k, "grouped": {"score": g_name, "k": int(g_k)}},
        "validation": validation,
        "das": das,
        "baselines": {"grouped_neurons": grouped, "neuron_halves": halves, "do_nothing": do_nothing_iia(model, test)},
        "das_train_loss": [h["train_loss"] for h in fit.history],
        "sources_cached": fit.sources_cached,
        "seconds": {"mlp": round(t_mlp, 2), "das_and_baselines": round(t_das, 2),
                    "total": round(time.perf_counter() - t0, 2)},
    }


def summary(rows: list[dict]) -> dict:
    """``{id: {mean, sd, min, max}}`` over seeds (sd 0.0 for one seed)."""
    out = {}
    for name in rows[0]:
        vals = [r[name] for r in rows]
        out[name] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "min": min(vals), "max": max(vals)}
    return out


def collate(runs: list[dict]) -> dict:
    das = [r["das"] for r in runs]
    baselines = {b: [r["baselines"][b] for r in runs] for b in BASELINES}
    margins = [{n: r["das"][n] - max(r["baselines"][b][n] for b in BASELINES) for n in ("WX", "YZ")} for r in runs]
    return {
        "runs": runs,
        "das": {"per_seed": das, "summary": summary(das)},
        "baselines": {b: {"per_seed": v, "summary": summary(v)} for b, v in baselines.items()},
        "margin": {"per_seed": margins, "summary": summary(margins)},
    }


def checks(part: dict) -> dict:
    runs = part["runs"]
    return {
        "factual_accuracy >= 0.99": all(r["factual_accuracy"] >= 0.99 for r in runs),
        "DAS WX and YZ >= 0.95 on every seed": all(min(r["das"]["WX"], r["das"]["YZ"]) >= 0.95 for r in runs),
        f"every baseline >= {MARGIN} below DAS on WX and YZ, every seed":
            all(min(m.values()) >= MARGIN for m in part["margin"]["per_seed"]),
    }


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def print_tables(title: str, part: dict) -> None:
    print(f"\n{title}")
    print("| seed | factual acc | mixed units | k (DAS / grouped) | DAS WX | DAS YZ | DAS both "
          "| grouped WX | grouped YZ | grouped both | halves WX | halves YZ | do-nothing WX | do-nothing YZ |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in part["runs"]:
        d, b = r["das"], r["baselines"]
        g, h, z = b["grouped_neurons"], b["neuron_halves"], b["do_nothing"]
        sel = r["selected"]
        print(f"| {r['seed']} | {r['factual_accuracy']:.4f} | {r['mixed_units']:.2f} | {sel['das_k']} / "
              f"{sel['grouped']['k']} ({sel['grouped']['score']}) | {d['WX']:.3f} | {d['YZ']:.3f} | {d['both']:.3f} "
              f"| {g['WX']:.3f} | {g['YZ']:.3f} | {g['both']:.3f} | {h['WX']:.3f} | {h['YZ']:.3f} "
              f"| {z['WX']:.3f} | {z['YZ']:.3f} |")
    print("\n| method | WX (mean ± sd) | YZ | both |")
    print("|---|---:|---:|---:|")
    rows = [("DAS (rotated)", part["das"]["summary"])] + [(b, part["baselines"][b]["summary"]) for b in BASELINES]
    for name, s in rows:
        print(f"| {name} | {fmt(s['WX'])} | {fmt(s['YZ'])} | {fmt(s['both'])} |")
    m = part["margin"]["summary"]
    print(f"DAS minus the best baseline: WX {fmt(m['WX'])} (worst {m['WX']['min']:.3f}), "
          f"YZ {fmt(m['YZ'])} (worst {m['YZ']['min']:.3f})")


def save(payload: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(payload, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["WX", "YZ", "both"]
    labels = {"grouped_neurons": "grouped units", "neuron_halves": "units 0:16 / 16:32 (both: whole layer)",
              "do_nothing": "do nothing"}
    series = [("DAS (rotation)", payload["das"]["per_seed"])] + [
        (labels[b], payload["baselines"][b]["per_seed"]) for b in BASELINES]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(series)
    for j, (label, rows) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [statistics.fmean(r[n] for r in rows) for n in names], width, label=label)
        for r in rows:
            ax.scatter(xs, [r[n] for n in names], color="black", s=6, zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("held-out IIA")
    n = len(payload["seeds"])
    ax.set_title(f"Hierarchical equality, plain MLP, hidden layer {payload['layer']} pre-activations\n"
                 f"({n} seed{'s' * (n > 1)}; dots: seeds)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(series), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(OUT / "iia.png", dpi=120)
    plt.close(fig)


def run_setting(causal, name: str) -> dict:
    cfg = SETTINGS[name]
    runs = []
    for seed in cfg["seeds"]:
        row = run_seed(causal, seed, cfg["l1"], cfg["layer"], cfg["component"])
        runs.append(row)
        print(f"[{name}] seed {seed}: factual accuracy {row['factual_accuracy']:.4f}, mixed units "
              f"{row['mixed_units']:.2f} ({row['seconds']['total']:.1f} s; source activations cached: "
              f"{row['sources_cached']})", flush=True)
    return {"l1": cfg["l1"], "layer": cfg["layer"], "component": cfg["component"], "seeds": cfg["seeds"],
            **collate(runs)}


def main() -> dict:
    t0 = time.perf_counter()
    causal = pv.hierarchical_equality(embed_dim=4)
    main_cfg = SETTINGS["main"]
    payload = {"small": SMALL,
               "recipe": {"hidden": HIDDEN, "factual": FACTUAL, "settings": SETTINGS, "das": DAS,
                          "k_candidates": K_CANDIDATES, "n_val": N_VAL, "n_test": N_TEST, "margin": MARGIN},
               **run_setting(causal, "main")}
    print_tables(f"Plain network (no L1), hidden layer {main_cfg['layer']} pre-activations (units mixed): held-out "
                 "test IIA, settings chosen on the validation set", payload)
    payload["checks"] = checks(payload)
    if not SMALL:
        old = payload["old_recipe"] = run_setting(causal, "old_recipe")
        old["checks"] = checks(old)
        print_tables("Old recipe (first-layer L1), first hidden layer's output: reported as measured, not checked",
                     old)
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    payload["pyvene_like"] = pv.__version__
    save(payload)
    print()
    for name, ok in payload["checks"].items():
        print(f"check: {name}: {'yes' if ok else 'NO'}")
    if not SMALL:
        for name, ok in payload["old_recipe"]["checks"].items():
            print(f"old recipe (not a target): {name}: {'yes' if ok else 'no'}")
    print(f"\nsaved {OUT / 'results.json'} and {OUT / 'iia.png'}; total {payload['seconds']:.1f} s")
    return payload


if __name__ == "__main__":
    main()
    sys.exit(0)
