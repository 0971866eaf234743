"""The script tests/test_distributed.py launches with ``torchrun --nproc_per_node 2`` (gloo, CPU).

It is an ordinary user script: no launch flag, no ``cpu=True``, the same code one process runs.
Each rank writes what it saw to ``<out>/rank<r>.json``; the test compares those files with
one-process runs of the same script (``run(...)`` imported in-process).

Usage: ``torchrun --nproc_per_node 2 tests/dist_worker.py <out dir> [<checkpoint to resume>]``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import pyvene_like as pv
import pyvene_like.training.loop as loop_module

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: the shared tiny models
from tiny_models import MLP  # noqa: E402

IDS = {0: ["WX"], 1: ["YZ"], 2: ["WX", "YZ"]}
SUBSPACES = {0: [0], 1: [1], 2: [0, 1]}
N_TRAIN, N_EVAL = 128, 50  # 50: not a multiple of 2 * batch, so evaluation pads a shard
BATCH = 16                 # per process; one process uses gradient_accumulation_steps=2


def data():
    cm = pv.hierarchical_equality()
    return (pv.generate_counterfactual_dataset(cm, N_TRAIN, IDS, seed=0),
            pv.generate_counterfactual_dataset(cm, N_EVAL, IDS, seed=1))


def boundless():
    torch.manual_seed(0)
    rep = pv.RepresentationConfig(0, "block_output", intervention_type="boundless_rotated_space")
    return pv.IntervenableModel(rep, MLP())


def rotated():
    torch.manual_seed(0)
    rep = pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space",
                                  subspace_partition=[[0, 8], [8, 16]])
    return pv.IntervenableModel(rep, MLP())


def run(accumulation: int, checkpoint_dir=None, resume=None, boundless_run: bool = True) -> dict:
    """The one script: boundless DAS with a temperature anneal (cached sources), then rotated
    DAS with subspaces and checkpoints, then evaluate(); what it saw, as JSON-able numbers.

    SGD, since Adam turns rounding-level gradient differences (a sum in another order) into
    steps of size lr on coordinates whose gradient is ~0; a linear schedule, so that the
    learning rate has to follow the optimizer steps too."""
    train, ev = data()
    out: dict = {}
    if boundless_run:
        out["boundless"] = _boundless(train, ev, accumulation)
    out["rotated"] = _rotated(train, ev, accumulation, checkpoint_dir, resume)
    return out


def _boundless(train, ev, accumulation, **cache):
    im = boundless()
    tr = pv.Trainer(im, train, ev, epochs=2, batch_size=BATCH, lr=0.5, optimizer=torch.optim.SGD,
                    gradient_accumulation_steps=accumulation, temperature_schedule=(50.0, 0.1),
                    load_best_at_end=False, show_progress=False, **cache)
    rows = []
    collect = im.collect_source_representations
    im.collect_source_representations = lambda s, u=None: rows.append(len(s[0])) or collect(s, u)
    res = tr.train()
    del im.collect_source_representations
    iv = im.interventions[0]
    return {
        "temperature": iv.get_temperature().item(),
        "rotation": iv.rotate_layer.weight.detach().tolist(),
        "boundaries": [p.detach().tolist() for n, p in iv.named_parameters() if "rotate" not in n],
        "history": res.history, "global_step": res.global_step, "total_steps": tr.total_steps,
        "cached": res.sources_cached, "cache_rows": sum(rows), "source_cache": res.source_cache,
        "world": tr.accelerator.num_processes,
    }


def _rotated(train, ev, accumulation, checkpoint_dir, resume):
    im = rotated()
    tr = pv.Trainer(im, train, ev, subspaces=SUBSPACES, epochs=2, batch_size=BATCH, lr=0.5,
                    optimizer=torch.optim.SGD, gradient_accumulation_steps=accumulation, checkpoint_dir=checkpoint_dir,
                    id_names={0: "WX", 1: "YZ", 2: "both"}, load_best_at_end=False, show_progress=False)
    res = tr.train(resume_from_checkpoint=resume)
    seen = []
    hook = im.model.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    result = pv.evaluate(im, ev, subspaces=SUBSPACES, batch_size=8, id_names={0: "WX", 1: "YZ", 2: "both"})
    hook.remove()
    return {
        "rotation": im.interventions[0].rotate_layer.weight.detach().tolist(),
        "history": res.history, "global_step": res.global_step,
        "eval": result.as_dict(), "eval_rows": sum(seen),
    }


def features() -> dict:
    """train_sae and train_codebook_model (with dead-code replacement) under the launch: every
    process must end with the same weights and history."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pyvene_like.codebook import get_codebooks, train_codebook_model, wrap_codebook
    from pyvene_like.sae import train_sae

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    sae = train_sae(x, 16, k=2, epochs=2, batch_size=32, show_progress=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=12, n_positions=16)).eval()
    model = wrap_codebook(model, ["head_attention_value_output"], num_codes=16, k=2, seed=0)
    ids = 1 + (torch.randint(1, 6, (64, 1), generator=g) + torch.arange(8)) % 6
    cb = train_codebook_model(model, ids, steps=6, batch_size=8, lr=1e-2, dead_code_steps=2, log_every=3,
                              show_progress=False)
    codes = get_codebooks(model)
    return {
        "sae": {"W_dec": sae.sae.W_dec.tolist(), "history": sae.history},
        "codebook": {"history": cb.history, "replaced": cb.replaced, "global_step": cb.global_step,
                     "codes": [c.codes.detach().tolist() for c in codes.values()],
                     "wte": model.transformer.wte.weight.detach().tolist()},
    }


def collect() -> dict:
    """collect_activations with 4 batches (3, 3, 3, 1 examples), several positions for some
    examples, labels and a user column, into the default temporary folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pyvene_like.analysis import activation_metadata, collect_activations

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=12, n_positions=16)).eval()
    ids = torch.randint(0, 12, (10, 8), generator=torch.Generator().manual_seed(1))
    positions = [[1], [2, 3], 4, [5, 6, 7], 0, 1, [2, 3], 3, 4, 5]
    seen = []
    hook = model.transformer.h[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    ds = collect_activations(model, {"input_ids": ids}, [(0, "block_output"), (1, "mlp_output")],
                             positions=positions, labels=[i % 3 for i in range(10)], class_names=["a", "b", "c"],
                             batch_size=3, columns={"idx": list(range(100, 110))})
    hook.remove()
    folder = Path(ds.cache_files[0]["filename"]).parent
    return {"rows": ds.to_dict(), "examples_read": sum(seen), "files": sorted(os.listdir(folder)),
            "folder": str(folder), "metadata": activation_metadata(ds)}


def collect_tokens() -> dict:
    """collect_activations(positions="all") over 5 prompts of different lengths in batches of 2."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pyvene_like.analysis import collect_activations

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=12, n_positions=16)).eval()
    prompts = [[(3 * i + j) % 12 for j in range(2 + i)] for i in range(5)]
    seen = []
    hook = model.transformer.h[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    got = collect_activations(model, prompts, [(0, "block_output"), (1, "head_attention_value_output", [1])],
                              positions="all", batch_size=2, skip_first=1)
    hook.remove()
    return {"examples_read": sum(seen), "columns": {c: [t.tolist() for t in v] for c, v in got.items()}}


def fsdp() -> dict:
    """A GPT-2 wrapped with FSDP (one unit, gloo, CPU): interchange as on the plain model, and the
    Trainer's refusal."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from transformers import GPT2Config, GPT2LMHeadModel

    def make():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=12, n_positions=16)).eval()

    g = torch.Generator().manual_seed(0)
    base, source = torch.randint(0, 12, (2, 6), generator=g), torch.randint(0, 12, (2, 6), generator=g)
    rep = pv.RepresentationConfig(1, "block_output", intervention_type="vanilla")
    outs = []
    for model in (make(), FullyShardedDataParallel(make(), device_id=torch.device("cpu"), use_orig_params=True)):
        with torch.no_grad():
            outs.append(pv.IntervenableModel(rep, model)({"input_ids": base}, [{"input_ids": source}],
                                                         {"sources->base": 3})[1].logits)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"),
                              FullyShardedDataParallel(make(), device_id=torch.device("cpu"), use_orig_params=True))
    cols = {"input_ids": base, "source_input_ids": source[:, None], "labels": torch.tensor([1, 2])}
    try:
        pv.Trainer(im, cols, input_key="input_ids", unit_locations=5, batch_size=2, show_progress=False)
        refused = ""
    except pv.ConfigError as e:
        refused = str(e)
    return {"interchange_equal": torch.allclose(outs[0], outs[1], atol=1e-6), "refused": refused}


def main() -> None:
    out_dir = Path(sys.argv[1])
    resume = sys.argv[2] if len(sys.argv) > 2 else None
    rank = int(os.environ.get("RANK", 0))
    writes = out_dir / f"writes-rank{rank}.txt"
    write = loop_module.write_checkpoint

    def counting_write(path, *a, **k):
        with open(writes, "a") as f:
            f.write(f"{path}\n")
        return write(path, *a, **k)

    loop_module.write_checkpoint = counting_write
    result = run(1, checkpoint_dir=out_dir / "ckpt")
    if resume is not None:
        result["resumed"] = run(1, resume=resume, boundless_run=False)["rotated"]
    # the same boundless run with its source cache on disk: each process writes its half to one folder
    train, ev = data()
    result["boundless_disk"] = _boundless(train, ev, 1, source_cache="disk", source_cache_dir=out_dir / "sources")
    result["features"] = features()
    result["collect"] = collect()
    result["collect_tokens"] = collect_tokens()
    result["fsdp"] = fsdp()
    result["rank"] = rank
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
