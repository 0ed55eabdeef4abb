"""Runs that stop when they cannot win: `fit` with a time budget (read on an injected clock, never a real wait)
and early stopping on a monitored target, keeping the best epoch's weights; without either, nothing changes."""

from dataclasses import replace

import pytest
import torch

import cxr.train
from cxr.data import phantom_dataset
from cxr.phantom import PhantomConfig
from cxr.spec import preset
from cxr.train import Budget, EarlyStopping, TrainConfig, fit
from cxr.weights import tensors_digest
from tests.ticking import Ticking

CFG = TrainConfig(epochs=8, batch_size=48, seed=3, threads=1, augment=False)


@pytest.fixture(scope="module")
def data():
    return phantom_dataset(PhantomConfig(n=96, resolution=32), workers=1)


def shrink_logits(model, x, y):
    return ((model(x) + 1.0) ** 2).mean()


def scripted(values):
    """A monitor returning `values` in turn and keeping a copy of the weights it was shown each time."""
    seen = []

    def monitor(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        model.eval()  # as a real monitor does (inference): the loop must put the training mode back
        return values[len(seen) - 1]

    return monitor, seen


def test_a_run_past_its_budget_stops_after_that_epoch_and_says_why(data, monkeypatch):
    ticking = Ticking(100)  # every epoch takes 100 s by the budget's clock
    monkeypatch.setattr(cxr.train, "budget_clock", ticking)
    res = fit(preset("tiny"), data, CFG, shrink_logits, budget=Budget.start(250))
    stop = res.stop
    assert [h["epoch"] for h in res.history] == [1, 2, 3]  # 200 s < 250 s after epoch 2, 300 s after epoch 3
    assert (stop.epochs_run, stop.epochs_planned, stop.stopped) == (3, 8, "budget")
    assert stop.reason == "budget: 250 s reached after 3 of 8 epochs"
    assert stop.seconds == 300 and stop.time_budget_s == 250 and ticking.readings == 4  # start + one per epoch
    assert stop.summary() == "stopped after 3 of 8 epochs — budget: 250 s reached after 3 of 8 epochs"
    # the epochs it ran are the unbudgeted run's: the budget changes nothing while the run goes on
    same = fit(preset("tiny"), data, CFG, shrink_logits, stop_after_epoch=3)
    assert tensors_digest(res.model.state_dict()) == tensors_digest(same.model.state_dict())
    assert same.stop.stopped == "interrupted" and same.stop.reason == "interrupted after epoch 3 (resumable)"
    assert not res.model.training


def test_the_budget_counts_from_the_treatments_start_and_one_epoch_always_runs(data, monkeypatch):
    monkeypatch.setattr(cxr.train, "budget_clock", Ticking(100))
    budget = Budget.start(50)
    assert budget.spent()  # read 100 s later (work before the loop took it): spent before the first epoch
    res = fit(preset("tiny"), data, replace(CFG, epochs=3), shrink_logits, budget=budget)
    assert res.stop.epochs_run == 1 and res.stop.reason == "budget: 50 s reached after 1 of 3 epochs"
    assert not Budget.start(None).spent()


def test_early_stopping_after_patience_epochs_restores_the_best_epochs_weights(data):
    monitor, seen = scripted([0.50, 0.70, 0.69, 0.65, 0.99, 0.99, 0.99, 0.99])
    res = fit(preset("tiny"), data, CFG, shrink_logits, early_stop=EarlyStopping(monitor, patience=2, name="toy"))
    stop = res.stop
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4] and len(seen) == 4
    assert (stop.epochs_run, stop.epochs_planned, stop.stopped) == (4, 8, "no_improvement")
    assert stop.reason == "no improvement of toy for 2 epochs (best 0.7000 at epoch 2)"
    assert [m["value"] for m in stop.monitored] == [0.50, 0.70, 0.69, 0.65]
    assert stop.best_epoch == stop.restored_epoch == 2
    restored = res.model.state_dict()
    assert all(torch.equal(restored[k], seen[1][k]) for k in restored)  # by value: epoch 2's weights
    assert any(not torch.equal(restored[k], seen[3][k]) for k in restored)  # not the last epoch's
    assert "kept epoch 2's weights" in stop.summary()


def test_an_improvement_below_min_delta_does_not_count(data):
    monitor, _ = scripted([0.60, 0.605, 0.609, 0.7])
    res = fit(preset("tiny"), data, replace(CFG, epochs=4), shrink_logits,
              early_stop=EarlyStopping(monitor, patience=2, min_delta=0.01))
    assert res.stop.epochs_run == 3 and res.stop.best_epoch == res.stop.restored_epoch == 1
    assert res.stop.reason.startswith("no improvement of the held-out target for 2 epochs")


def test_without_budget_or_patience_the_run_is_unchanged(data):
    small = replace(CFG, epochs=3)
    plain = fit(preset("tiny"), data, small, shrink_logits)
    assert [h["epoch"] for h in plain.history] == [1, 2, 3]
    assert (plain.stop.epochs_run, plain.stop.epochs_planned, plain.stop.stopped, plain.stop.reason) == (
        3, 3, "completed", "completed")
    assert plain.stop.monitored == [] and plain.stop.restored_epoch is None and plain.stop.summary() == ""
    # a budget that does not bind, and a monitor that never stops the run and peaks at the end, change nothing
    monitor, seen = scripted([0.1, 0.2, 0.3])
    watched = fit(preset("tiny"), data, small, shrink_logits, budget=Budget.start(1e9),
                  early_stop=EarlyStopping(monitor, patience=5))
    assert tensors_digest(watched.model.state_dict()) == tensors_digest(plain.model.state_dict())
    assert [h["loss"] for h in watched.history] == [h["loss"] for h in plain.history]
    assert watched.stop.stopped == "completed" and watched.stop.restored_epoch is None and len(seen) == 3
    assert watched.stop.summary().startswith("ran all 3 epochs watching the held-out target")


def test_stopping_settings_are_checked():
    from cxr.errors import InvalidInput

    with pytest.raises(InvalidInput):
        Budget.start(0)
    with pytest.raises(InvalidInput):
        EarlyStopping(lambda m: 0.0, patience=0)
    with pytest.raises(InvalidInput):
        EarlyStopping(lambda m: 0.0, patience=1, min_delta=-0.1)


def test_a_monitor_that_cannot_measure_counts_as_no_improvement(data):
    monitor, _ = scripted([0.5, float("nan"), float("nan"), 0.9])
    res = fit(preset("tiny"), data, replace(CFG, epochs=4), shrink_logits,
              early_stop=EarlyStopping(monitor, patience=2))
    assert res.stop.epochs_run == 3 and res.stop.best_epoch == 1 and res.stop.stopped == "no_improvement"
