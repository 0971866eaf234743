"""Files the browser app serves, made by a tiny random GPT-2 in a few seconds (no network).

``build(folder)`` writes, under ``folder``:

* ``model/``: the GPT-2 (``save_pretrained``) and a word-level tokenizer, whose vocabulary holds
  :data:`INJECT`, a token that is HTML (the app must show it as text);
* ``codebooks/`` (``save_codebooks``) and ``records/`` (``CodeRecords.save_to_disk``): codebooks
  on the heads' attention values of both layers, and where their codes fire on :data:`CORPUS`;
* ``sae/``: a random SAE in SAELens' layout at ``blocks.1.hook_resid_post``;
* ``prompts/animals.txt``, ``prompts/objects.txt``: two prompt sets;
* ``patching/``, ``patching_heads/``: ``PatchingResult.save`` of a layer x position sweep and of a
  layer x head x position one;
* ``interventions/``: ``save_pretrained`` of a vanilla intervention at layer 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: A token that is an HTML element with a handler: shown as text, it sets nothing.
INJECT = "<img/src=x/onerror=window.__pwned=1>"
ANIMALS = ["cat", "dog", "bird", "fish", "horse"]
OBJECTS = ["ball", "boat", "tree", "house", "car"]
CORPUS = [f"the {a} saw a {o} near the {b}" for a, b in zip(ANIMALS, ANIMALS[1:] + ANIMALS[:1]) for o in OBJECTS]
CORPUS += [f"a {o} is {INJECT} here" for o in OBJECTS]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in CORPUS for w in t.split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", unk_token="<unk>",
                                   eos_token="<s>")


def build(folder: Path) -> dict[str, Path]:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    import pyvene_like as pv
    from pyvene_like.analysis import patching_sweep
    from pyvene_like.codebook import record_codes, save_codebooks, wrap_codebook
    from pyvene_like.sae import SAE

    folder = Path(folder)
    tok = make_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=32,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).eval().save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    # Everything below is built on the model as the app will load it, so saved identities match.
    model = AutoModelForCausalLM.from_pretrained(folder / "model").eval()

    cb_model = AutoModelForCausalLM.from_pretrained(folder / "model").eval()
    wrap_codebook(cb_model, ["head_attention_value_output"], num_codes=8, k=1, seed=0)
    save_codebooks(cb_model, folder / "codebooks")
    record_codes(cb_model, CORPUS, tok, top_n=5).save_to_disk(folder / "records")

    torch.manual_seed(1)
    sae = SAE(d_in=config.n_embd, d_sae=48, hook_name="blocks.1.hook_resid_post")
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    (folder / "sae").mkdir()
    doc = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "architecture": "standard",
           "metadata": {"model_name": "tiny", "hook_name": sae.hook_name, "hook_head_index": None}}
    (folder / "sae" / "cfg.json").write_text(json.dumps(doc))
    save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, str(folder / "sae" / "sae_weights.safetensors"))

    (folder / "prompts").mkdir()
    (folder / "prompts" / "animals.txt").write_text("\n".join(f"the {a} saw a {b}" for a in ANIMALS for b in ANIMALS[:2]))
    (folder / "prompts" / "objects.txt").write_text("\n".join(f"a {o} near the {p}" for o in OBJECTS for p in OBJECTS[:2]))

    clean = tok(["the cat saw a ball near the dog"], return_tensors="pt")["input_ids"]
    corrupted = tok(["the fish saw a tree near the horse"], return_tensors="pt")["input_ids"]
    result = patching_sweep(model, clean, "kl_to_clean", corrupted=corrupted, progress=False,
                            tokens=tok.convert_ids_to_tokens(clean[0].tolist()))
    result.save(folder / "patching")
    # heads x positions: a 3-D grid, drawn one head at a time
    patching_sweep(model, clean, "kl_to_clean", corrupted=corrupted, component="head_attention_value_output",
                   unit="h.pos", progress=False, tokens=tok.convert_ids_to_tokens(clean[0].tolist())
                   ).save(folder / "patching_heads")

    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="vanilla"), model)
    im.save_pretrained(folder / "interventions")
    return {name: folder / name for name in ("model", "codebooks", "records", "sae", "prompts", "patching",
                                             "patching_heads", "interventions")}
