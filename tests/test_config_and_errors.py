"""Config round trips, the registry, and every user mistake raising a clear library error."""

import json

import pytest
import torch

import pyvene_like as pv
from pyvene_like.errors import ConfigError, LocationError, ShapeError, SiteError


def test_positional_order_follows_pyvene():
    rep = pv.RepresentationConfig(3, "mlp_output", "pos", 2, "addition", None, [[0, 8]])
    assert (rep.layer, rep.component, rep.unit, rep.max_number_of_units) == (3, "mlp_output", "pos", 2)
    assert rep.intervention_type is pv.AdditionIntervention
    assert rep.subspace_partition == [[0, 8]]


def test_json_round_trip():
    cfg = pv.IntervenableConfig(
        [
            pv.RepresentationConfig(0, "block_output", intervention_type="vanilla", group_key="g"),
            {"layer": 2, "component": "head_query_output", "unit": "h.pos", "intervention_type": "noise",
             "intervention_kwargs": {"noise_level": 0.2, "seed": 1}},
        ],
        mode="parallel",
    )
    text = cfg.to_json()
    back = pv.IntervenableConfig.from_json(text)
    assert back == cfg
    assert json.loads(text)["representations"][1]["intervention_type"] == "noise"
    assert back.representations[1].intervention_type is pv.NoiseIntervention


def test_intervention_types_default_and_list():
    cfg = pv.IntervenableConfig([pv.RepresentationConfig(0), pv.RepresentationConfig(1)], intervention_types=["zero", pv.AdditionIntervention])
    assert cfg.intervention_types == [pv.ZeroIntervention, pv.AdditionIntervention]
    # one shared type is reported as that type, as in pyvene
    assert pv.IntervenableConfig(pv.RepresentationConfig(0)).intervention_types is pv.VanillaIntervention


def test_registry_validates_and_suggests():
    with pytest.raises(ConfigError, match=r"'vanila' is not a registered intervention.*Did you mean 'vanilla'"):
        pv.RepresentationConfig(0, intervention_type="vanila")
    with pytest.raises(TypeError, match="is not an Intervention subclass"):
        pv.register_intervention("bad")(int)
    with pytest.raises(ConfigError, match="'vanilla' is already registered"):
        @pv.register_intervention("vanilla")
        class Other(pv.Intervention):
            def forward(self, base, source=None, subspaces=None):
                return base


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layer": -1}, "layer must be a non-negative int, got -1"),
        ({"unit": "posn"}, r"unit 'posn' is not supported; accepted: 'pos', 'h', 'h.pos'.*Did you mean.*'pos'"),
        ({"max_number_of_units": 0}, "max_number_of_units must be a positive int, got 0"),
        ({"subspace_partition": [[0, 4], [2, 8]]}, "subspace_partition must be non-overlapping"),
        ({"intervention_kwargs": [1]}, "intervention_kwargs must be a dict"),
        ({"intervention_type": int}, "int is not an Intervention subclass"),
    ],
)
def test_bad_representation_fields(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pv.RepresentationConfig(**{"layer": 0, **kwargs})


def test_unknown_fields_and_modes():
    with pytest.raises(ConfigError, match=r"representation field 'compnent' is unknown.*Did you mean 'component'"):
        pv.IntervenableConfig([{"layer": 0, "compnent": "block_output"}])
    with pytest.raises(ConfigError, match=r"mode 'paralel' is not supported.*Did you mean 'parallel'"):
        pv.IntervenableConfig([pv.RepresentationConfig(0)], mode="paralel")
    with pytest.raises(ConfigError, match="intervention_types has 1 entries for 2 representations"):
        pv.IntervenableConfig([pv.RepresentationConfig(0), pv.RepresentationConfig(1)], intervention_types=["zero"])
    with pytest.raises(ConfigError, match="holds an intervention instance"):
        pv.RepresentationConfig(0, intervention=pv.ZeroIntervention()).to_dict()


def test_site_errors(gpt2):
    with pytest.raises(SiteError, match=r"component 'mlp_ouput' is not known.*Did you mean.*'mlp_output'"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "mlp_ouput"), gpt2)
    with pytest.raises(SiteError, match=r"layer 4 is out of range for GPT2LMHeadModel: it has 4 layers \(accepted: 0..3\)"):
        pv.IntervenableModel(pv.RepresentationConfig(4, "block_output"), gpt2)
    with pytest.raises(SiteError, match="unit 'h' addresses heads, but component 'block_output' has no heads"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", unit="h"), gpt2)
    with pytest.raises(SiteError, match="use 'head_query_output'"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "query_output", unit="h"), gpt2)
    with pytest.raises(SiteError, match="needs unit 'h' or 'h.pos', got unit 'pos'"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "head_query_output"), gpt2)
    with pytest.raises(SiteError, match=r"module path 'transformer.h.0.mlpp' does not exist.*Did you mean.*'transformer.h.0.mlp'"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "transformer.h.0.mlpp.output"), gpt2)
    with pytest.raises(SiteError, match="ending in '.input' or '.output'"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "transformer.h.0.mlp"), gpt2)
    with pytest.raises(SiteError, match="component prefix 'encoder' is not a layer stack"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "encoder.block_output"), gpt2)


def test_location_errors(gpt2, ids):
    base, src = ids
    b, s = {"input_ids": base}, {"input_ids": src}
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "head_attention_value_output", unit="h"), gpt2)
    with pytest.raises(LocationError, match=r"head 4 is out of range; the site has 4 heads \(accepted: 0..3\)"):
        im(b, [s], {"sources->base": ([[[4]] * 3], [[[0]] * 3])})
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output"), gpt2)
    with pytest.raises(LocationError, match="position 10 is out of range for a sequence of length 10"):
        im(b, [s], {"sources->base": (10, 0)})
    with pytest.raises(LocationError, match="has 2 examples but the batch has 3"):
        im(b, [s], {"sources->base": ([[[0], [1]]], [[[0], [1]]])})
    with pytest.raises(LocationError, match="key 'source->base' is not accepted"):
        im(b, [s], {"source->base": 1})
    with pytest.raises(LocationError, match="same n for every example"):
        im(b, [s], {"sources->base": ([[[0], [1, 2], [3]]], [[[0], [1, 2], [3]]])})
    with pytest.raises(LocationError, match=r"dimension 64 is outside the site's width 64"):
        im(b, [s], {"sources->base": 1}, subspaces=[[64]])


def test_shape_and_source_errors(gpt2, ids):
    base, src = ids
    b, s = {"input_ids": base}, {"input_ids": src}
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output"), gpt2)
    with pytest.raises(ShapeError, match="sources\\[0\\] has batch size 2 but base has 3"):
        im(b, [{"input_ids": src[:2]}], {"sources->base": 1})
    with pytest.raises(ConfigError, match="needs a source: pass sources"):
        im(b, unit_locations={"base": 1})
    add = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="addition"), gpt2)
    with pytest.raises(ShapeError, match="last dimension is 32 but the site's units have width 64"):
        add(b, unit_locations={"base": 1}, source_representations=torch.zeros(32))
    with pytest.raises(ShapeError, match=r"shape \(2, 1, 64\) does not fit the units \(3, 1, 64\)"):
        add(b, unit_locations={"base": 1}, source_representations=torch.zeros(2, 1, 64))
    two = pv.IntervenableModel([pv.RepresentationConfig(0), pv.RepresentationConfig(1)], gpt2)
    with pytest.raises(ConfigError, match="got 3 inputs for 2 source group"):
        two(b, [s, s, s], {"sources->base": 1})
    with pytest.raises(LocationError, match="expected one entry per intervention \\(2\\)"):
        two(b, [s], {"sources->base": ([[[1]] * 3], [[[1]] * 3])})
    with pytest.raises(ShapeError, match="base: expected a tensor or a dict of tensors"):
        im("hello", [s], {"sources->base": 1})
    for m in gpt2.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_intervention_kwargs_are_checked(gpt2):
    with pytest.raises(ConfigError, match="intervention_kwargs 'noise_lvl' is not accepted by NoiseIntervention"):
        pv.IntervenableModel(pv.RepresentationConfig(0, intervention_type="noise", intervention_kwargs={"noise_lvl": 1}), gpt2)
    # pyvene ignores a field the type does not take; so do we, with a warning
    with pytest.warns(pv.PyveneLikeWarning, match="low_rank_dimension=4 is not used by VanillaIntervention and is ignored"):
        im = pv.IntervenableModel(pv.RepresentationConfig(0, low_rank_dimension=4), gpt2)
    assert type(im.interventions[0]) is pv.VanillaIntervention
