"""Tests driven by the intervention registry: every registered built-in type, from the example
it declares (``example_kwargs``, ``null_kwargs``, ``example_model``), round-trips through
save_pretrained / from_pretrained bit for bit, leaves the model untouched under a null edit,
and keeps working after ``.to(torch.float64)`` and device moves. A new registered type is
picked up here without editing this file."""

import copy

import pytest
import torch
from conftest import make_gpt2

import pyvene_like as pv
from pyvene_like.errors import PyveneLikeWarning

LAYER, COMPONENT, POS = 1, "block_output", 4


def _builtin_classes():
    seen, out = set(), []
    for cls in pv.registered_interventions().values():
        if cls.__module__.startswith("pyvene_like.") and cls not in seen:
            seen.add(cls)
            out.append(cls)
    return sorted(out, key=lambda c: c.registry_name)


CLASSES = _builtin_classes()
IDS = [c.registry_name for c in CLASSES]


@pytest.fixture(scope="module")
def model():
    return make_gpt2()


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 1000, (2, 8), generator=g), torch.randint(0, 1000, (2, 8), generator=g)


def _build(cls, model, kwargs):
    base_model = cls.example_model(model, LAYER, COMPONENT)
    rep = pv.RepresentationConfig(LAYER, COMPONENT, intervention_type=cls.registry_name, **kwargs)
    return pv.IntervenableModel(rep, base_model)


def _run(im, base, src):
    if im.interventions[0].needs_source:
        return im({"input_ids": base}, [{"input_ids": src}], {"sources->base": POS}, return_dict=True)
    return im({"input_ids": base}, unit_locations={"base": POS}, return_dict=True)


def _perturb(im, seed=0):
    """Every parameter and floating buffer moved off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in im.interventions.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.3)
        for b in im.interventions.buffers():
            if b.is_floating_point():
                b.mul_(0.75)


def _width(model):
    return model.config.n_embd


def test_every_builtin_declares_a_working_example():
    assert {"vanilla", "rotated_space", "sae_steer", "codebook"} <= set(IDS)
    for cls in CLASSES:
        kwargs = cls.example_kwargs(64)
        assert isinstance(kwargs, dict), cls
        null = cls.null_kwargs(64)
        assert null is None or isinstance(null, dict), cls


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_save_and_load_round_trip_bit_exactly(cls, model, ids, tmp_path):
    kwargs = cls.example_kwargs(_width(model))
    im = _build(cls, model, kwargs)
    _perturb(im)
    fn = kwargs.get("intervention_kwargs", {}).get("fn")
    if fn is not None:  # a function is saved by name only, and given back
        with pytest.warns(PyveneLikeWarning, match="saved by name only"):
            im.save_pretrained(tmp_path)
    else:
        im.save_pretrained(tmp_path)
    loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=im.model,
                                                  functions={0: fn} if fn is not None else None)
    a, b = im.interventions[0], loaded.interventions[0]
    assert type(b) is cls and b is not a
    assert b.get_config() == a.get_config()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k
        else:
            assert v == sb[k], k
    base, src = ids
    with torch.no_grad():
        out = _run(im, base, src).intervened_outputs.logits
        assert torch.equal(out, _run(loaded, base, src).intervened_outputs.logits)
        if cls.modifies_output:  # the example does something, so the equality above means something
            assert not torch.equal(out, im.model(input_ids=base).logits)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_get_config_rebuilds_the_intervention(cls, model):
    """from_config(get_config()) then load_state_dict gives the same intervention."""
    im = _build(cls, model, cls.example_kwargs(_width(model)))
    _perturb(im)
    iv = im.interventions[0]
    config = iv.get_config()
    if "fn" in cls.example_kwargs(_width(model)).get("intervention_kwargs", {}):
        config = {**config, "fn": iv.fn}  # code is not a setting
    again = cls.from_config(config)
    again.load_state_dict(iv.state_dict())
    assert again.get_config() == iv.get_config()


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.null_kwargs(64) is not None],
                         ids=[c.registry_name for c in CLASSES if c.null_kwargs(64) is not None])
def test_null_edit_leaves_outputs_bit_identical(cls, model, ids):
    im = _build(cls, model, cls.null_kwargs(_width(model)))
    _perturb(im)
    base, _ = ids
    with torch.no_grad():
        plain = im.model(input_ids=base).logits
        out = _run(im, base, base)  # the source, where one is taken, is the base itself
    assert torch.equal(out.intervened_outputs.logits, plain)


def _moves():
    moves = [torch.float64]
    if torch.cuda.is_available():
        moves.append("cuda")
    return moves


@pytest.mark.parametrize("move", _moves(), ids=str)
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_dtype_and_device_moves_keep_it_working(cls, move, model, ids):
    null = cls.null_kwargs(_width(model))
    kwargs = null if null is not None else cls.example_kwargs(_width(model))
    im = _build(cls, copy.deepcopy(model), kwargs)
    im.to(move)
    base, _ = ids
    device = next(im.model.parameters()).device
    base = base.to(device)
    with torch.no_grad():
        out = _run(im, base, base).intervened_outputs.logits
        plain = im.model(input_ids=base).logits
    assert out.dtype == plain.dtype and out.device == plain.device and torch.isfinite(out).all()
    if move is torch.float64:
        assert out.dtype == torch.float64
    if null is not None:
        assert torch.equal(out, plain)
