"""Train/eval flags come back as found: evaluation, the source cache and training leave every
module of the user's model and of the interventions in the mode it had (issue 13)."""

from __future__ import annotations

import torch
from test_training import IDS, MLP, SUBSPACES, rotated
from torch import nn

import pyvene_like as pv
from pyvene_like.modes import evaluating, modes_restored, training_flags


def flags(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def mixed(im: pv.IntervenableModel) -> list[bool]:
    """A deliberately uneven set of flags: model in eval, one inner layer in train mode, the
    wrapper and its interventions in train mode (nn.Module's default)."""
    im.model.eval()
    im.model.layers[1].train()
    return flags(im)


def test_evaluate_leaves_every_flag_as_found():
    im = rotated(MLP())
    before = mixed(im)
    ds = pv.generate_counterfactual_dataset(pv.hierarchical_equality(), 64, IDS, seed=0)
    pv.evaluate(im, ds, subspaces=SUBSPACES)
    assert flags(im) == before
    # the reported bug: evaluate() used to put the (eval-mode) model back in train mode
    assert not im.model.training


def test_trainer_source_cache_and_training_leave_flags_as_found():
    im = rotated(MLP())
    before = mixed(im)
    ds = pv.generate_counterfactual_dataset(pv.hierarchical_equality(), 64, IDS, seed=0)
    pv.Trainer(im, ds, subspaces=SUBSPACES, epochs=1, batch_size=32, show_progress=False,
               cache_sources=True).train()
    assert flags(im) == before


def test_dropout_model_stays_deterministic_after_evaluate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 2)).eval()
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "0.output", intervention_type="zero"), model)
    x = torch.randn(4, 16)
    with evaluating(im):
        im(x, unit_locations={"base": None})
    assert not model.training and torch.equal(model(x), model(x))


def test_modes_restored_after_an_error_and_each_module_once():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).eval()
    model[1].train()
    before = flags(model)
    try:
        with modes_restored(model):
            model.train()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert flags(model) == before
    shared = nn.Linear(2, 2)
    assert len(training_flags(nn.Sequential(shared, shared), shared)) == 2
