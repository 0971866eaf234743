"""Distributed Alignment Search on hierarchical equality (Geiger et al. 2023), end to end.

Run: ``python tutorials/02_das_equality.py`` (this is ``make demo``); ``TUTORIAL_SMALL=1``
gives the CI-sized run of the same steps.

The task: four entity vectors W, X, Y, Z (4 numbers each); the label says whether
"W equals X" and "Y equals Z" are both true or both false. The high-level algorithm computes
two booleans, WX and YZ, and compares them. Does a small MLP trained on the task compute
them too, and where? DAS learns a rotation of the MLP's first hidden layer in which one half
of the dimensions behaves as WX and the other as YZ under interchange interventions.

1. train the MLP (deliberately initialised) to >= 0.99 held-out accuracy;
2. DAS: a rotation at the first hidden layer, two subspaces (halves of the width) for WX
   and YZ, trained on counterfactual data; held-out IIA for WX, YZ and both;
3. the neuron-aligned baseline: the same interchanges on the unrotated neurons (its "both"
   swaps the whole layer, which just copies the source's computation, so it matches the
   model's factual accuracy; WX and YZ are the informative columns);
4. the table, saved as JSON and a plot in ``tutorial_outputs/02_das_equality/``.
"""

from __future__ import annotations

import json
import os
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

# The recipe. TUTORIAL_SMALL runs the same steps on one seed with a smaller held-out set.
SEEDS = [0] if SMALL else [0, 1, 2, 3, 4]
HIDDEN = 32
# The MLP: an L1 penalty on the first layer's weights, switched on after 30 % of the steps (from
# the start it can stall training at chance), makes first-layer units read either the W/X
# or the Y/Z entities, which is what lets a rotation of that layer separate WX from YZ.
FACTUAL = dict(n_train=60_000, epochs=30, batch_size=1024, lr=1e-2, l1=3e-3, l1_start=0.3)
DAS = dict(n_train=40_000, epochs=6, batch_size=256, lr=2e-2, scheduler="cosine")
N_TEST = 3_000 if SMALL else 12_000
IDS = {0: ["WX"], 1: ["YZ"], 2: ["WX", "YZ"]}
NAMES = {0: "WX", 1: "YZ", 2: "both"}
SUBSPACES = {0: [0], 1: [1], 2: [0, 1]}  # partition 0 = WX, 1 = YZ


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


def train_mlp(causal, seed: int) -> tuple[MLP, float]:
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
            if step >= FACTUAL["l1_start"] * steps:
                loss = loss + FACTUAL["l1"] * first.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    model.eval()
    with torch.no_grad():
        acc = (model(test["input_ids"]).argmax(-1) == test["labels"]).float().mean().item()
    return model, acc


def intervenable(model, kind: str):
    half = HIDDEN // 2
    rep = pv.RepresentationConfig(0, "block_output", intervention_type=kind, subspace_partition=[[0, half], [half, HIDDEN]])
    return pv.IntervenableModel(rep, model)


def run_seed(causal, seed: int) -> dict:
    t0 = time.perf_counter()
    model, factual = train_mlp(causal, seed)
    t_mlp = time.perf_counter() - t0
    train = pv.generate_counterfactual_dataset(causal, DAS["n_train"], IDS, seed=3000 + seed)
    test = pv.generate_counterfactual_dataset(causal, N_TEST, IDS, seed=4000 + seed)

    torch.manual_seed(seed)
    das = intervenable(model, "rotated_space")
    trainer = pv.Trainer(
        das, train, subspaces=SUBSPACES, epochs=DAS["epochs"], batch_size=DAS["batch_size"], lr=DAS["lr"],
        optimizer=torch.optim.Adam, scheduler=DAS["scheduler"], id_names=NAMES, seed=seed, show_progress=False,
    )
    fit = trainer.train()
    das_eval = trainer.evaluate(test)
    t_das = time.perf_counter() - t0 - t_mlp

    baseline = pv.evaluate(intervenable(model, "vanilla"), test, subspaces=SUBSPACES, id_names=NAMES)
    return {
        "seed": seed,
        "factual_accuracy": factual,
        "das": das_eval.iia_per_id,
        "das_overall": das_eval.iia,
        "baseline": baseline.iia_per_id,
        "baseline_overall": baseline.iia,
        "das_train_loss": [h["train_loss"] for h in fit.history],
        "sources_cached": fit.sources_cached,
        "seconds": {"mlp": round(t_mlp, 2), "das": round(t_das, 2), "total": round(time.perf_counter() - t0, 2)},
    }


def save(rows: list[dict], seconds: float) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"small": SMALL, "recipe": {"hidden": HIDDEN, "factual": FACTUAL, "das": DAS, "n_test": N_TEST},
               "runs": rows, "seconds": round(seconds, 2), "pyvene_like": pv.__version__}
    (OUT / "results.json").write_text(json.dumps(payload, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(NAMES.values())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for j, (key, label) in enumerate((("das", "DAS (rotated)"), ("baseline", "neuron-aligned"))):
        means = [sum(r[key][n] for r in rows) / len(rows) for n in names]
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        ax.bar(xs, means, width, label=label)
        for r in rows:
            ax.scatter(xs, [r[key][n] for n in names], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("held-out IIA")
    ax.set_title(f"Hierarchical equality, first hidden layer ({len(rows)} seed{'s' * (len(rows) > 1)})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "iia.png", dpi=120)
    plt.close(fig)


def main() -> list[dict]:
    t0 = time.perf_counter()
    causal = pv.hierarchical_equality(embed_dim=4)
    rows = []
    for seed in SEEDS:
        row = run_seed(causal, seed)
        rows.append(row)
        print(f"seed {seed}: factual accuracy {row['factual_accuracy']:.4f} "
              f"({row['seconds']['total']:.1f} s; source activations cached: {row['sources_cached']})")
    print()
    print("| seed | factual acc | DAS WX | DAS YZ | DAS both | neuron WX | neuron YZ | neuron both |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d, b = r["das"], r["baseline"]
        print(f"| {r['seed']} | {r['factual_accuracy']:.4f} | {d['WX']:.3f} | {d['YZ']:.3f} | {d['both']:.3f} "
              f"| {b['WX']:.3f} | {b['YZ']:.3f} | {b['both']:.3f} |")
    seconds = time.perf_counter() - t0
    save(rows, seconds)
    print(f"\nsaved {OUT / 'results.json'} and {OUT / 'iia.png'}; total {seconds:.1f} s")
    if not SMALL:
        worst = min(min(r["das"].values()) for r in rows)
        factual = min(r["factual_accuracy"] for r in rows)
        print(f"worst DAS IIA over seeds and ids: {worst:.3f} (target 0.95); worst factual accuracy: "
              f"{factual:.4f} (target 0.99)")
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
