"""Bad constructor settings, generated, for every registered intervention type.

Each registered class is built from its declared example (``example_kwargs``) with one
argument replaced by a generated bad value: a bool where an int belongs, NaN/inf/strings/
negatives for numbers, integer/complex/bool tensors for vectors, lists, dicts, None. The result
is either a working intervention or a library error (:class:`PyveneLikeError`) whose message
names the argument; never a raw ``TypeError``/``ValueError``/``IndexError``/``AttributeError``.
The same for ``RepresentationConfig`` fields and for building an ``IntervenableModel``, after
which the model is exactly as it was.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pyvene_like as pv  # noqa: E402
from pyvene_like.errors import ConfigError, PyveneLikeError, SiteError  # noqa: E402

_SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                     deadline=None)
W = 8  # the example width


def _classes():
    seen, out = set(), []
    for _name, cls in sorted(pv.registered_interventions().items()):
        # the library's own types (test modules register throwaway ones of their own)
        if id(cls) not in seen and cls.__module__.startswith("pyvene_like."):
            seen.add(id(cls))
            out.append(cls)
    return out


CLASSES = _classes()


def _params(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _example(cls) -> dict:
    """Constructor kwargs of the declared example at width ``W``."""
    rep = cls.example_kwargs(W)
    kwargs = dict(rep.get("intervention_kwargs", {}))
    params = _params(cls)
    for name in ("low_rank_dimension", "subspace_partition"):
        if name in rep:
            kwargs[name] = rep[name]
    if "embed_dim" in params and "embed_dim" not in kwargs:
        kwargs["embed_dim"] = W
    return kwargs


def _tensor(dtype, n=W, nan=False):
    if dtype.is_complex:
        return torch.zeros(n, dtype=dtype) + 1j
    t = torch.ones(n).to(dtype)
    if nan and n and dtype.is_floating_point:
        t[0] = math.nan
    return t


bad_scalars = st.one_of(
    st.booleans(), st.none(), st.integers(-3, 3), st.integers(2**40, 2**41),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.5, 1e308, -0.0]),
    st.text(max_size=5), st.sampled_from([1j, b"x", object()]),
)
bad_tensors = st.builds(
    _tensor,
    st.sampled_from([torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64, torch.float32,
                     torch.float16]),
    st.integers(0, W + 2), st.booleans(),
)
bad_values = st.one_of(
    bad_scalars, bad_tensors,
    st.lists(bad_scalars, max_size=3),
    st.lists(st.lists(st.integers(-2, 10) | st.booleans() | st.floats(-2, 10), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), bad_scalars, max_size=2),
)


def _check(build, field: str):
    """``build()`` gives an object, or a library error naming ``field``."""
    try:
        return build()
    except PyveneLikeError as e:
        assert field in str(e), f"the error does not name {field!r}: {e}"
        return None
    # anything else propagates: a raw error is the failure this test looks for


def test_every_example_builds():
    for cls in CLASSES:
        assert isinstance(cls(**_example(cls)), pv.Intervention), cls


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@_SETTINGS
@given(data=st.data())
def test_bad_constructor_settings_are_library_errors(cls, data):
    params = _params(cls)
    name = data.draw(st.sampled_from(params), label="argument")
    value = data.draw(bad_values, label="value")
    kwargs = {**_example(cls), name: value}
    iv = _check(lambda: cls(**kwargs), name)
    if iv is not None:
        assert isinstance(iv, pv.Intervention)
        # what was accepted is a setting it can save and be rebuilt from
        rebuilt = type(iv).from_config(iv.get_config()) if not isinstance(iv, pv.LambdaIntervention) else iv
        assert isinstance(rebuilt, pv.Intervention)


rep_fields = st.sampled_from(["layer", "component", "unit", "max_number_of_units", "low_rank_dimension",
                              "subspace_partition", "group_key", "intervention_link_key",
                              "intervention_kwargs", "source_representation", "intervention_type"])


@_SETTINGS
@given(field=rep_fields, value=bad_values)
def test_bad_representation_fields_are_library_errors(field, value):
    _check(lambda: pv.RepresentationConfig(**{field: value}), field)


class Model(list):
    """The model, with a short repr for hypothesis' reports."""

    def __repr__(self):
        return "Model(tiny gpt2)"


@pytest.fixture(scope="module")
def small():
    from conftest import make_gpt2

    return Model([make_gpt2(n_layer=2, n_embd=W, n_head=2, vocab_size=20, n_positions=8)])


def _fingerprint(model):
    return ([(n, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()],
            [m.training for m in model.modules()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))


@_SETTINGS
@given(data=st.data())
def test_building_on_a_model_is_all_or_nothing(small, data):
    (small,) = small
    cls = data.draw(st.sampled_from([c for c in CLASSES if c.example_model.__func__ is pv.Intervention.example_model.__func__]),
                    label="class")
    rep = dict(cls.example_kwargs(W))
    kwargs = dict(rep.pop("intervention_kwargs", {}))
    where = data.draw(st.sampled_from(["layer", "component", "kwarg", "source_representation", "embed_dim"]),
                      label="where")
    value = data.draw(bad_values, label="value")
    layer, component = 1, "block_output"
    if where == "layer":
        layer = data.draw(st.integers(0, 99) | st.booleans(), label="layer")
    elif where == "component":
        component = data.draw(st.sampled_from(["embedding_output", "mlp_output", "head_attention_value_output",
                                               "transformer.h.0.mlp.output", "nope"]), label="component")
    elif where == "kwarg" and [p for p in _params(cls) if p not in ("embed_dim",)]:
        name = data.draw(st.sampled_from([p for p in _params(cls) if p != "embed_dim"]), label="name")
        kwargs[name] = value
    elif where == "source_representation":
        rep["source_representation"] = value
    else:
        kwargs["embed_dim"] = data.draw(st.integers(1, 3 * W), label="embed_dim")
    before = _fingerprint(small)
    try:
        im = pv.IntervenableModel(pv.RepresentationConfig(layer, component, intervention_type=cls,
                                                          intervention_kwargs=kwargs, **rep), small)
    except PyveneLikeError:
        after = _fingerprint(small)
        assert after[2] == before[2] and after[1] == before[1]
        assert all(a[:2] == b[:2] and torch.equal(a[2], b[2]) for a, b in zip(after[0], before[0]))
        return
    assert isinstance(im, pv.IntervenableModel)
    assert _fingerprint(small)[2] == before[2]  # hooks are only on during a call


# -- hand-picked cases, one per bullet of the issue ------------------------------------------------
def test_hand_picked_constructor_settings(gpt2):
    with pytest.raises(ConfigError, match=r"SigmoidMaskIntervention: temperature must be a positive finite number, "
                                          r"got 'cold'"):
        pv.SigmoidMaskIntervention(embed_dim=8, temperature="cold")
    with pytest.raises(ConfigError, match=r"NoiseIntervention: noise_level must be a non-negative finite number, "
                                          r"got nan"):
        pv.NoiseIntervention(noise_level=math.nan)
    with pytest.raises(ConfigError, match=r"NoiseIntervention: seed \(an int or None\) must be a non-negative int, "
                                          r"got True"):
        pv.NoiseIntervention(seed=True)
    with pytest.raises(ConfigError, match=r"VanillaIntervention: embed_dim must be a positive int or None, got 2.5"):
        pv.VanillaIntervention(embed_dim=2.5)
    with pytest.raises(ConfigError, match=r"AdditionIntervention: embed_dim=7 does not match the width of the "
                                          r"site transformer.h.1 \(output\) \(64\); leave embed_dim unset"):
        pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition",
                                                     intervention_kwargs={"embed_dim": 7}), gpt2)
    with pytest.raises(SiteError, match=r"layer 99 is out of range for GPT2LMHeadModel: it has 4 layers "
                                        r"\(accepted: 0..3; component 'embedding_output' is the same site"):
        pv.IntervenableModel(pv.RepresentationConfig(99, "embedding_output", intervention_type="zero"), gpt2)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in gpt2.modules())


@pytest.mark.parametrize("vector, dtype", [
    (torch.ones(64, dtype=torch.int64), "torch.int64"),
    (torch.ones(64, dtype=torch.complex64), "torch.complex64"),
    (torch.ones(64, dtype=torch.bool), "torch.bool"),
])
def test_non_floating_steering_vectors_are_refused(vector, dtype):
    with pytest.raises(ConfigError, match=rf"source_representation must be a floating-point tensor, got dtype {dtype}"):
        pv.RepresentationConfig(1, "block_output", intervention_type="addition", source_representation=vector)
    from pyvene_like.sae import SAE

    with pytest.raises(ConfigError, match=rf"sae_steer: value is a {dtype} tensor; accepted: a number"):
        pv.SAESteerIntervention(sae=SAE(4, 8), features=[0, 1], value=vector[:2])


def test_a_list_of_ints_is_read_as_floats_and_nan_is_refused():
    rep = pv.RepresentationConfig(source_representation=[1, 0, 0])
    assert rep.source_representation.dtype == torch.float32
    with pytest.raises(ConfigError, match="source_representation must hold finite numbers"):
        pv.RepresentationConfig(source_representation=[1.0, math.nan])


@pytest.mark.parametrize("partition, match", [
    ([], r"subspace_partition must be a non-empty list of subspaces, each a \[start, end\) pair"),
    ([[0.0, 4.0]], r"subspace_partition must be a non-empty list .* got \[\[0.0, 4.0\]\]"),
    ([[0, True]], r"subspace_partition must be a non-empty list"),
    ([[]], r"subspace_partition must be a non-empty list"),
    ([[0, 4, 4]], r"a list of dims needs distinct dims >= 0, got \[0, 4, 4\]"),
    ([[0, -4, 2]], r"a list of dims needs distinct dims >= 0"),
    ([[-2, 4]], r"a two-int entry is a \[start, end\) range and needs 0 <= start < end, got \[-2, 4\]"),
    ([[4, 4]], r"a two-int entry is a \[start, end\) range"),
    ([[0, 4], [2, 8]], r"subspace_partition must be non-overlapping"),
    ([[0, 1, 2], [2]], r"subspace_partition must be non-overlapping"),
    ([[0, 1, 9]], r"reaches dimension 10 but the site's width is 8"),
])
def test_bad_partitions(partition, match):
    if "reaches dimension" not in match:  # a config alone does not know the width
        with pytest.raises(ConfigError, match=match):
            pv.RepresentationConfig(subspace_partition=partition)
    with pytest.raises(ConfigError, match=match):
        pv.VanillaIntervention(embed_dim=8, subspace_partition=partition)


@pytest.mark.parametrize("field", ["group_key", "intervention_link_key"])
def test_unhashable_keys_are_config_errors(field):
    with pytest.raises(ConfigError, match=rf"{field} must be hashable \(a string, an int or a tuple of them\), "
                                          r"got \['a'\] \(list\)"):
        pv.RepresentationConfig(**{field: ["a"]})


def test_negative_ids_are_refused():
    from pyvene_like.sae import SAE

    with pytest.raises(ConfigError, match=r"feature -1 is outside the SAE's 8 features \(accepted: 0..7\)"):
        pv.SAEAblateIntervention(sae=SAE(4, 8), features=[-1])
    with pytest.raises(ConfigError, match=r"codes: code -3 is not a non-negative int"):
        pv.CodebookIntervention(codes=[-3])
    with pytest.raises(ConfigError, match=r"layer must be a non-negative int, got -1"):
        pv.RepresentationConfig(layer=-1)


# -- finite but absurd numbers -----------------------------------------------------------------------
HUGE_OR_TINY = [1e308, -1e308, 1e39, 3e38, 1e-50, 1e-320, 2**200]


def _number_params(cls):
    sig = inspect.signature(cls.__init__).parameters
    return [p for p, v in sig.items() if p != "self" and (isinstance(v.default, float) or v.annotation in ("float",))]


@pytest.mark.parametrize("cls", [c for c in CLASSES if _number_params(c)], ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", HUGE_OR_TINY, ids=repr)
def test_finite_but_absurd_numbers_are_refused_or_stay_finite(cls, value):
    """1e308 is a finite Python float but inf in float32: a noise level of 1e308 filled the
    activations with inf; a temperature of 1e-50 is 0 in float32 and the mask became NaN.
    Each number setting is either refused (naming it) or the intervention's output is finite."""
    torch.manual_seed(0)
    for name in _number_params(cls):
        kwargs = {**_example(cls), name: value}
        iv = _check(lambda kwargs=kwargs: cls(**kwargs), name)
        if iv is None:
            continue
        base, source = torch.randn(2, 1, W), torch.randn(2, 1, W)
        out = iv(base, source if iv.source_from == "source" else None)
        assert torch.isfinite(out).all(), f"{cls.__name__}({name}={value!r}) gave non-finite output"


def test_noise_level_is_checked_against_the_activations_dtype(gpt2):
    with pytest.raises(ConfigError, match=r"NoiseIntervention: noise_level must fit in float32 \(\|value\| <= 2.127e\+37, "
                                          r"leaving room for 16x\), got 1e\+308"):
        pv.NoiseIntervention(noise_level=1e308)
    with pytest.raises(ConfigError, match=r"NoiseIntervention: noise_level rounds to 0 in float32"):
        pv.NoiseIntervention(noise_level=1e-50)
    iv = pv.NoiseIntervention(noise_level=1e30, seed=0)
    assert torch.isfinite(iv(torch.zeros(2, 1, W))).all()
    with pytest.raises(ConfigError, match=r"noise_level=1e\+30 overflows torch.float16 activations \(noise_level <= 4094"):
        iv(torch.zeros(2, 1, W, dtype=torch.float16))


def test_sae_numbers_must_fit_the_sae_dtype():
    from pyvene_like.sae import SAE

    with pytest.raises(ConfigError, match=r"sae_steer: value must fit in float32 \(\|value\| <= 3.403e\+38\), got 1e\+308"):
        pv.SAESteerIntervention(sae=SAE(4, 8), value=1e308)
    with pytest.raises(ConfigError, match=r"sae_steer: value must fit in float16 .*got 100000.0"):
        pv.SAESteerIntervention(sae=SAE(4, 8, dtype="float16"), value=1e5)
    with pytest.raises(ConfigError, match=r"sae_swap: weights\[3\] must fit in float32"):
        pv.SAESwapIntervention(sae=SAE(4, 8), weights=[1.0] * 3 + [1e39] + [1.0] * 4)
    with pytest.raises(ConfigError, match=r"SAE layer_norm_eps rounds to 0 in float32 \(its smallest positive value "
                                          r"is 1.401e-45\), got 1e-50"):
        SAE(4, 8, normalize_activations="layer_norm", layer_norm_eps=1e-50)
    with pytest.raises(ConfigError, match=r"SAE norm_scaling_factor must fit in float32"):
        SAE(4, 8, normalize_activations="expected_average_only_in", norm_scaling_factor=1e300)
