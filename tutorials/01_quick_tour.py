"""A quick tour of pyvene_like on a tiny GPT-2 built locally (no download).

Run: ``python tutorials/01_quick_tour.py`` (``TUTORIAL_SMALL=1`` gives the CI-sized run;
this tour is already small, so both are the same).

1. interchange: copy the residual stream of a source at one position into the base;
2. steering: add a vector at one layer, on every position;
3. heads: swap one attention head's value output between examples;
4. collect: read activations without changing the output;
5. check: the engine's result equals a hand-written torch hook.
"""

from __future__ import annotations

import os

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

import pyvene_like as pv

transformers.logging.set_verbosity_error()
SMALL = os.environ.get("TUTORIAL_SMALL") == "1"


def main() -> dict:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    ).eval()
    base = {"input_ids": torch.randint(0, 1000, (2, 12))}
    source = {"input_ids": torch.randint(0, 1000, (2, 12))}
    results = {}

    # 1. interchange at layer 2, last position (pyvene's form: {"sources->base": pos})
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="vanilla"), model)
    orig, out = im(base, [source], {"sources->base": 11}, output_original_output=True)
    delta = (out.logits - orig.logits).abs().amax(-1)[0]
    print("1. interchange at layer 2, position 11: max |change| of logits per position")
    print("   ", [round(float(d), 3) for d in delta])
    assert torch.all(delta[:11] == 0) and delta[11] > 0, "only the last position may change"
    results["interchange_changed_positions"] = int((delta > 0).sum())

    # 2. steering: add a vector to the residual stream at layer 1, every position
    vec = torch.randn(64)
    steer = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), model)
    _, steered = steer(base, source_representations=vec)
    shift = (steered.logits - orig.logits).abs().mean()
    print(f"2. steering at layer 1: mean |change| of logits = {shift:.4f}")
    results["steering_shift"] = float(shift)

    # 3. one head: swap head 3's attention value output, position 5 -> 5, layer 0
    head = pv.IntervenableModel(pv.RepresentationConfig(0, "head_attention_value_output", unit="h.pos"), model)
    locs = {"sources->base": ([[[[3]] * 2, [[5]] * 2]], [[[[3]] * 2, [[5]] * 2]])}
    _, out_h = head(base, [source], locs)
    print(f"3. head 3 at position 5: logits change {float((out_h.logits - orig.logits).abs().max()):.4f}")

    # 4. collect MLP activations at two positions, output untouched
    col = pv.IntervenableModel(pv.RepresentationConfig(1, "mlp_activation", intervention_type="collect"), model)
    (_, acts), same = col(base, unit_locations={"base": [[[3, 7], [3, 7]]]})
    print(f"4. collected mlp_activation: shape {tuple(acts[0].shape)}; output unchanged: {torch.equal(same.logits, orig.logits)}")
    results["collected_shape"] = list(acts[0].shape)

    # 5. the same interchange as 1., by hand
    store = {}
    block = model.transformer.h[2]

    def read(m, a, o):
        store["src"] = o[0] if isinstance(o, tuple) else o

    h = block.register_forward_hook(read)
    model(**source)
    h.remove()

    def write(m, a, o):
        x = (o[0] if isinstance(o, tuple) else o).clone()
        x[:, 11] = store["src"][:, 11]
        return (x, *o[1:]) if isinstance(o, tuple) else x

    h = block.register_forward_hook(write)
    by_hand = model(**base)
    h.remove()
    same_as_hand = torch.equal(by_hand.logits, out.logits)
    print(f"5. engine result equals a hand-written hook: {same_as_hand}")
    assert same_as_hand
    results["matches_hand_written"] = same_as_hand
    return results


if __name__ == "__main__":
    with torch.no_grad():
        main()
