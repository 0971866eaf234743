"""The one training loop (pyvene_like.training.loop) against hand-written PyTorch loops.

A tiny linear regression is trained by ``TrainLoop`` and by the plain loop one would write
by hand (backward, clip, optimizer step, transformers schedule step, zero_grad); the weights
and the per-epoch losses must agree. Callbacks are checked for their order, early stopping
for when it stops and what it restores, checkpoints for a resumed run equal to an
uninterrupted one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_scheduler

import pyvene_like as pv
from pyvene_like.training.loop import (
    Callback,
    EarlyStopping,
    TrainLoop,
    make_accelerator,
    make_scheduler,
)

N, D = 48, 4


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = x @ torch.randn(D, 1, generator=g) + 0.1 * torch.randn(N, 1, generator=g)
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(D, 1)


def _loader(batch_size, seed=0):
    return DataLoader(_data(), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


class EpochLoss(Callback):
    """Writes the epoch's mean loss from the summed stats."""

    def on_epoch_end(self, loop, entry):
        entry["epoch"] = loop.epoch + 1
        entry["loss"] = loop.epoch_sums["loss"] / loop.epoch_sums["n"]


def _loop(model, *, batch_size=8, callbacks=(), seed=0, **kw):
    def step(batch):
        x, y = batch
        loss = F.mse_loss(model(x), y)
        return loss, {"loss": loss.item() * len(x), "n": len(x)}

    kw.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    return TrainLoop(step, model=model, loader=_loader(batch_size, seed), callbacks=[EpochLoss(), *callbacks],
                     show_progress=False, **kw)


def _hand_loop(model, *, batch_size, epochs, lr, schedule=None, warmup=0, max_grad_norm=None, device):
    """The loop one writes by hand: same shuffles, same schedule, same clipping."""
    loader = _loader(batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    total = epochs * len(loader)
    sched = get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=total) if schedule else None
    losses = []
    for _ in range(epochs):
        s, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
            opt.zero_grad()
            s, n = s + loss.item() * len(x), n + len(x)
        losses.append(s / n)
    return losses


@pytest.mark.parametrize("use_accelerate", [True, False])
def test_loop_equals_a_hand_written_loop(use_accelerate):
    model = _model()
    loop = _loop(model, epochs=3, scheduler="linear", warmup_steps=4, max_grad_norm=0.5, use_accelerate=use_accelerate)
    res = loop.run()
    ref = _model().to(loop.device)
    want = _hand_loop(ref, batch_size=8, epochs=3, lr=0.1, schedule="linear", warmup=4, max_grad_norm=0.5,
                      device=loop.device)
    assert res.global_step == 18 and loop.total_steps == 18 and not res.stopped_early
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert [h["loss"] for h in res.history] == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(model.weight, ref.weight)
    torch.testing.assert_close(model.bias, ref.bias)
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # linear decay to 0 at the end


def test_clipping_changes_the_run():
    runs = []
    for norm in (None, 1e-3):
        model = _model()
        _loop(model, epochs=1, max_grad_norm=norm).run()
        runs.append(model.weight.detach().clone())
    assert not torch.allclose(runs[0], runs[1])


def test_gradient_accumulation_equals_one_big_batch():
    """The sampler draws one permutation whatever the batch size, so 4 micro-batches of 4 see
    the rows of one batch of 16: with SGD on mean losses the weights must agree."""
    weights, losses = [], []
    for bs, acc in ((16, 1), (8, 2), (4, 4)):
        model = _model()
        loop = _loop(model, batch_size=bs, gradient_accumulation_steps=acc, epochs=2, scheduler="linear")
        res = loop.run()
        assert res.global_step == 2 * N // 16 == loop.total_steps
        weights.append(model.weight.detach().clone())
        losses.append([h["loss"] for h in res.history])
    for w, loss in zip(weights[1:], losses[1:]):
        torch.testing.assert_close(w, weights[0])
        assert loss == pytest.approx(losses[0], rel=1e-6)


def test_a_partial_accumulation_at_the_end_of_an_epoch_still_steps():
    model = _model()
    loader = DataLoader(_data(), batch_size=10)  # 5 micro-batches: steps after 2, 4 and 5
    steps = []

    class Steps(Callback):
        def on_step_end(self, loop, loss, stats):
            steps.append(loop.sync_gradients)

    loop = TrainLoop(lambda b: F.mse_loss(model(b[0]), b[1]), model=model, loader=loader,
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), gradient_accumulation_steps=2,
                     callbacks=[Steps()], show_progress=False)
    assert loop.total_steps == 3
    assert loop.run().global_step == 3
    assert steps == [False, True, False, True, True]


def test_callbacks_are_called_in_order():
    calls = []

    class Record(Callback):
        def on_train_begin(self, loop):
            calls.append("train_begin")

        def on_epoch_begin(self, loop):
            calls.append(f"epoch_begin {loop.epoch}")

        def on_step_begin(self, loop, batch):
            calls.append("step_begin")

        def on_before_optimizer_step(self, loop):
            assert all(p.grad is not None for p in loop.model.parameters())
            calls.append("before_optimizer_step")

        def on_step_end(self, loop, loss, stats):
            assert all(p.grad is None for p in loop.model.parameters())  # zeroed after the step
            calls.append(f"step_end {loop.global_step}")

        def on_epoch_end(self, loop, entry):
            calls.append(f"epoch_end {loop.epoch}")

        def should_stop(self, loop):
            calls.append("should_stop")
            return False

        def on_train_end(self, loop):
            calls.append(f"train_end {loop.finished}")

    _loop(_model(), batch_size=24, epochs=2, callbacks=[Record()]).run()
    step = ["step_begin", "before_optimizer_step"]
    assert calls == ["train_begin",
                     "epoch_begin 0", *step, "step_end 1", *step, "step_end 2", "epoch_end 0", "should_stop",
                     "epoch_begin 1", *step, "step_end 3", *step, "step_end 4", "epoch_end 1", "should_stop",
                     "train_end True"]


def test_train_end_runs_after_an_error():
    seen = []

    class End(Callback):
        def on_train_end(self, loop):
            seen.append(loop.finished)

    def step(batch):
        raise RuntimeError("boom")

    model = _model()
    loop = TrainLoop(step, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loader=_loader(8),
                     callbacks=[End()], show_progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        loop.run()
    assert seen == [False]


def test_early_stopping_stops_and_restores_the_best_state():
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    snapshots = {}

    class Score(Callback):
        def on_epoch_end(self, loop, entry):
            entry["score"] = next(scores)
            snapshots[loop.epoch + 1] = loop.model.weight.detach().clone()

    model = _model()
    loop = _loop(model, epochs=10, callbacks=[Score(), EarlyStopping("score", patience=2, restore=model)])
    res = loop.run()
    assert res.stopped_early and len(res.history) == 4 and res.global_step == 4 * N // 8
    assert res.history[-1]["score"] == 0.65
    assert loop.state["best_score"] == 0.7 and loop.state["best_epoch"] == 2
    torch.testing.assert_close(model.weight, snapshots[2])  # the weights of the best epoch
    assert not torch.equal(snapshots[2], snapshots[4])


def test_early_stopping_min_mode_min_delta_and_no_patience():
    scores = iter([1.0, 0.95, 0.5, 0.49])

    class Score(Callback):
        def on_epoch_end(self, loop, entry):
            entry["val_loss"] = next(scores)

    model = _model()
    loop = _loop(model, epochs=4, callbacks=[Score(), EarlyStopping("val_loss", mode="min", min_delta=0.1)])
    res = loop.run()
    assert not res.stopped_early and len(res.history) == 4
    assert loop.state["best_val_loss"] == 0.5 and loop.state["best_epoch"] == 3
    with pytest.raises(pv.ConfigError, match="mode='up'"):
        EarlyStopping("x", mode="up")


def test_max_steps_runs_across_epochs():
    model = _model()
    epochs = []

    class Epochs(Callback):
        def on_epoch_begin(self, loop):
            epochs.append(loop.epoch)

    loop = _loop(model, batch_size=16, epochs=None, max_steps=7, scheduler="linear", callbacks=[Epochs()])
    assert loop.total_steps == 7
    res = loop.run()
    assert res.global_step == 7 and epochs == [0, 1, 2]
    assert len(res.history) == 3  # the last, partial epoch gets its record too
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    capped = _loop(_model(), batch_size=16, epochs=5, max_steps=4)
    assert capped.total_steps == 4 and capped.run().global_step == 4


class Reseed(Callback):
    """Each epoch's shuffle depends only on the epoch, so a resumed run repeats it."""

    def __init__(self, gen):
        self.gen = gen

    def on_epoch_begin(self, loop):
        self.gen.manual_seed(1000 + loop.epoch)


def _resumable(model, **kw):
    gen = torch.Generator()
    loader = DataLoader(_data(), batch_size=8, shuffle=True, generator=gen)

    def step(batch):
        x, y = batch
        loss = F.mse_loss(model(x), y)
        return loss, {"loss": loss.item() * len(x), "n": len(x)}

    return TrainLoop(step, model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.05), loader=loader,
                     epochs=3, scheduler="cosine", warmup_steps=2, callbacks=[Reseed(gen), EpochLoss()],
                     checkpoint_module=model, show_progress=False, **kw)


def test_checkpoint_resume_equals_an_uninterrupted_run(tmp_path):
    full = _model()
    res = _resumable(full, checkpoint_dir=tmp_path).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-1", "epoch-2", "epoch-3"]
    assert (tmp_path / "epoch-2" / "checkpoint.json").is_file()
    resumed_model = _model(seed=7)  # other weights: the checkpoint overwrites them
    loop = _resumable(resumed_model)
    loop.load_checkpoint(tmp_path / "epoch-1")
    assert loop.state["epoch"] == 1 and loop.global_step == 6 and len(loop.history) == 1
    again = loop.run()
    assert again.global_step == res.global_step == 18
    assert [h["loss"] for h in again.history] == pytest.approx([h["loss"] for h in res.history], rel=1e-6)
    torch.testing.assert_close(resumed_model.weight, full.weight)
    with pytest.raises(pv.LoadError, match=r"lacks \['checkpoint.json'"):
        _resumable(_model()).load_checkpoint(tmp_path)


def test_make_scheduler_uses_transformers_schedules():
    def lrs(sched, opt, n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    p = [nn.Parameter(torch.zeros(1))]
    a, b = torch.optim.SGD(p, lr=1.0), torch.optim.SGD(p, lr=1.0)
    ours = make_scheduler("cosine", a, total_steps=10, warmup_steps=3)
    theirs = get_scheduler("cosine", b, num_warmup_steps=3, num_training_steps=10)
    got = lrs(ours, a, 10)
    assert got == lrs(theirs, b, 10)
    assert got[0] == 0.0 and got[3] == 1.0  # warm-up from 0 reaches the base rate at step `warmup`
    c = torch.optim.SGD(p, lr=1.0)
    assert lrs(make_scheduler("linear", c, total_steps=10, warmup_ratio=0.2), c, 3) == [0.0, 0.5, 1.0]
    ready = torch.optim.lr_scheduler.StepLR(c, 1)
    assert make_scheduler(ready, c, total_steps=10) is ready and make_scheduler(None, c, total_steps=10) is None
    with pytest.raises(pv.ConfigError, match=r"scheduler: 'cosin' is not a transformers schedule.*Did you mean 'cosine'"):
        make_scheduler("cosin", c, total_steps=10)


def test_make_accelerator_allows_another_precision():
    acc = make_accelerator("bf16")
    assert acc.mixed_precision == "bf16"
    assert make_accelerator("no").mixed_precision == "no"
    assert make_accelerator("no", gradient_accumulation_steps=3).gradient_accumulation_steps == 3
    with pytest.raises(pv.ConfigError, match=r"mixed_precision: got 'fp32'; accepted: 'no', 'fp16', 'bf16'"):
        make_accelerator("fp32")


def test_loop_bad_arguments():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = dict(model=model, optimizer=opt, loader=_loader(8), show_progress=False)
    with pytest.raises(pv.ConfigError, match="epochs=None needs max_steps"):
        TrainLoop(lambda b: 0, epochs=None, **kw)
    with pytest.raises(pv.ConfigError, match="max_steps: expected a positive int or None, got 0"):
        TrainLoop(lambda b: 0, max_steps=0, **kw)
    with pytest.raises(pv.ConfigError, match="checkpoint_dir needs checkpoint_module"):
        TrainLoop(lambda b: 0, checkpoint_dir="x", **kw)
    with pytest.raises(pv.ConfigError, match="gradient_accumulation_steps > 1 needs use_accelerate=True"):
        TrainLoop(lambda b: 0, gradient_accumulation_steps=2, use_accelerate=False, **kw)
    with pytest.raises(pv.ConfigError, match="mixed_precision needs use_accelerate=True"):
        TrainLoop(lambda b: 0, mixed_precision="bf16", use_accelerate=False, **kw)
    with pytest.raises(pv.ConfigError, match="the loader gave no batch; max_steps can never be reached"):
        TrainLoop(lambda b: 0, model=model, optimizer=opt, loader=[], epochs=None, max_steps=3,
                  use_accelerate=False, show_progress=False).run()


@pytest.mark.parametrize("use_accelerate", [True, False])
def test_a_step_with_nan_gradients_is_refused_and_not_taken(use_accelerate):
    """A NaN in one batch used to turn every weight into NaN for the rest of the run, silently."""
    model = _model()
    before = {}

    def step(batch):
        x, y = batch
        if loop.state["global_step"] == 3:
            before.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            x = x.clone()
            x[0, 0] = float("nan")
        return F.mse_loss(model(x), y)

    loop = TrainLoop(step, model=model, loader=_loader(8), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     epochs=2, show_progress=False, use_accelerate=use_accelerate)
    with pytest.raises(pv.TrainingError, match=r"gradients became inf or NaN at epoch 1, step 4 \(loss nan, "
                                                r"learning rate \[0\.1\]\); the step was not taken"):
        loop.run()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the last good step's weights


def test_an_update_that_overflows_the_parameters_is_reported():
    model = _model()
    loop = _loop(model, optimizer=torch.optim.SGD(model.parameters(), lr=1e6), epochs=3)
    with pytest.raises(pv.TrainingError, match=r"the optimizer step at epoch \d, step \d+ \(loss .*, learning rate "
                                                r"\[1000000\.0\]\) made parameters inf or NaN"):
        loop.run()


def test_finite_training_is_not_stopped():
    model = _model()
    _loop(model, epochs=2).run()
    assert all(torch.isfinite(p).all() for p in model.parameters())
