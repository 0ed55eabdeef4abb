"""The shared training loop `cxr.train.fit`: any per-batch loss, seeded batches, exact resume, the job's
own checkpoint, and a checkpoint format that stays readable."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cxr.data import phantom_dataset
from cxr.phantom import PhantomConfig
from cxr.spec import preset
from cxr.train import TrainConfig, fit, one_cycle, train
from cxr.weights import tensors_digest

CFG = TrainConfig(epochs=3, batch_size=40, seed=5, threads=1)


@pytest.fixture(scope="module")
def data():
    return phantom_dataset(PhantomConfig(n=96, resolution=32), workers=1)


def shrink_logits(model, x, y):
    """A loss that is not the house BCE: pull every logit towards -1, labels unused."""
    return ((model(x) + 1.0) ** 2).mean()


def test_resume_twice_after_interruptions_equals_uninterrupted(tmp_path, data):
    straight = fit(preset("tiny"), data, CFG, shrink_logits)
    parts = [fit(preset("tiny"), data, CFG, shrink_logits, checkpoint_dir=tmp_path, stop_after_epoch=stop)
             for stop in (1, 2, None)]
    assert [p.resumed_from_epoch for p in parts] == [0, 1, 2]
    assert [h["epoch"] for p in parts for h in p.history] == [1, 2, 3]
    assert tensors_digest(parts[-1].model.state_dict()) == tensors_digest(straight.model.state_dict())
    # every epoch's loss is the uninterrupted run's: same batches, same optimizer and schedule state
    assert [h["loss"] for p in parts for h in p.history] == [h["loss"] for h in straight.history]
    assert not parts[-1].model.training  # handed back in eval mode
    # the step is the caller's: the house BCE gives other weights from the same start
    assert tensors_digest(train(preset("tiny"), data, CFG).model.state_dict()) != tensors_digest(
        straight.model.state_dict())


def test_each_batch_is_the_seeded_order_with_its_labels(data):
    seen = []

    def record(model, x, y):
        seen.append((x.clone(), y.clone()))
        return model(x).sum() * 0.0

    calls = []
    fit(preset("tiny"), data, replace(CFG, epochs=1, augment=False), record,
        progress=lambda phase, done, total, info: calls.append((phase, done, total)))
    # by hand: epoch 1 visits the permutation drawn from (seed, 1), batch by batch, each batch sorted
    order = np.random.default_rng([CFG.seed, 1]).permutation(len(data))
    batches = [np.sort(order[s:s + CFG.batch_size]) for s in range(0, len(data), CFG.batch_size)]
    labels = data.aligned_labels(preset("tiny").pathologies)
    assert len(seen) == len(batches) == 3
    for (x, y), idx in zip(seen, batches, strict=True):
        assert np.array_equal(x.numpy(), data.images(idx))
        assert np.array_equal(y.numpy(), labels[idx], equal_nan=True)
    assert calls == [("batch", 1, 3), ("batch", 2, 3), ("batch", 3, 3), ("epoch", 1, 1)]


def test_a_checkpoint_is_resumed_only_by_the_job_that_wrote_it(tmp_path, data):
    fit(preset("tiny"), data, CFG, shrink_logits, job={"kind": "a"}, checkpoint_dir=tmp_path, stop_after_epoch=1)
    assert fit(preset("tiny"), data, CFG, shrink_logits, job={"kind": "b"}, checkpoint_dir=tmp_path,
               stop_after_epoch=1).resumed_from_epoch == 0  # and it overwrote the checkpoint with its own
    again = fit(preset("tiny"), data, CFG, shrink_logits, job={"kind": "b"}, checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch == 1
    init = {k: v.clone() for k, v in again.model.state_dict().items()}  # other initial weights: another job
    assert fit(preset("tiny"), data, CFG, shrink_logits, job={"kind": "b"}, init_state=init,
               checkpoint_dir=tmp_path).resumed_from_epoch == 0
    # the thread count is not part of the job (and fit sets it)
    fit(preset("tiny"), data, CFG, shrink_logits, checkpoint_dir=tmp_path / "t", stop_after_epoch=1)
    before = torch.get_num_threads()
    try:
        assert fit(preset("tiny"), data, replace(CFG, threads=2), shrink_logits,
                   checkpoint_dir=tmp_path / "t").resumed_from_epoch == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_schedule_is_the_callers(data):
    asked = []

    def constant(opt, max_lr, total_steps):
        asked.append((max_lr, total_steps))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    res = fit(preset("tiny"), data, CFG, shrink_logits, schedule=constant)
    assert asked == [(CFG.lr, CFG.epochs * 3)]  # 96 images in batches of 40: 3 steps an epoch
    default = fit(preset("tiny"), data, CFG, shrink_logits, schedule=one_cycle)
    assert tensors_digest(res.model.state_dict()) != tensors_digest(default.model.state_dict())


def test_checkpoint_format_stays_readable(tmp_path, data):
    """What a checkpoint holds and how its job is named: a checkpoint written by an earlier version of the
    loop is resumed only while these stay the same."""
    train(preset("tiny"), data, CFG, checkpoint_dir=tmp_path, stop_after_epoch=1)
    with safe_open(str(tmp_path / "last.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["cxr_decide_ckpt"])
        names = list(f.keys())
    assert set(meta) == {"epoch", "fingerprint", "sched", "groups"} and meta["epoch"] == 1
    cfg = {"epochs": 3, "batch_size": 40, "lr": 4e-3, "weight_decay": 1e-4, "seed": 5, "augment": True}
    assert meta["fingerprint"] == json.dumps(
        {"spec": preset("tiny").digest(), "data": data.digest(), "cfg": cfg, "init": None}, sort_keys=True)
    assert {n.split(".")[0] for n in names} == {"model", "optim"}
    assert meta["groups"][0]["lr"] == pytest.approx(meta["sched"]["_last_lr"][0])  # the schedule's lr is kept
