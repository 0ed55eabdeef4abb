"""Distillation: the loss against a hand computation, learning from the teacher, resuming exactly."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cxr.data import phantom_dataset
from cxr.distill import DistillConfig, distill, distill_loss
from cxr.errors import InvalidInput
from cxr.infer import predict_logits
from cxr.model import build_model, parameter_count
from cxr.phantom import PhantomConfig
from cxr.spec import preset
from cxr.train import TrainConfig
from cxr.weights import tensors_digest

CFG = DistillConfig(epochs=2, batch_size=32, seed=3, threads=1, temperature=2.0)


@pytest.fixture(scope="module")
def data():
    return phantom_dataset(PhantomConfig(n=96, resolution=32), workers=1)


@pytest.fixture(scope="module")
def teacher(data):
    """A teacher with informative logits: random weights, BatchNorm statistics of the data, logits spread
    like a trained model's (a one-epoch tiny model only predicts prevalences)."""
    m = build_model(preset("tiny"), seed=5)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    with torch.no_grad():
        m(torch.from_numpy(data.images(np.arange(len(data)))))
        m.eval()
        m.classifier.weight.mul_(2.0 / float(torch.from_numpy(predict_logits(m, data)).std()))
    return m


def _student():
    return preset("tiny").model_copy(update={"growth_rate": 2, "bn_size": 2})


def test_loss_is_t_squared_soft_bce_plus_label_bce():
    zs = torch.tensor([[0.5, -1.0, 2.0]])
    zt = torch.tensor([[1.5, -3.0, 0.0]])
    y = torch.tensor([[1.0, float("nan"), 0.0]])
    t = 3.0

    def bce(p_logit, q):  # by hand: −q log σ(p) − (1−q) log(1−σ(p))
        s = 1 / (1 + math.exp(-p_logit))
        return -(q * math.log(s) + (1 - q) * math.log(1 - s))

    soft = np.mean([bce(a / t, 1 / (1 + math.exp(-b / t))) for a, b in zip(zs[0].tolist(), zt[0].tolist(),
                                                                             strict=True)])
    hard = np.mean([bce(0.5, 1.0), bce(2.0, 0.0)])  # the unknown label is skipped
    assert float(distill_loss(zs, zt, y, t, 0.7)) == pytest.approx(t * t * soft + 0.7 * hard, rel=1e-6)
    assert float(distill_loss(zs, zt, y, t, 0.0)) == pytest.approx(t * t * soft, rel=1e-6)


@pytest.mark.slow  # about 6 s on an idle 2-core machine (60 optimizer steps)
def test_student_learns_the_teacher(data, teacher):
    spec = preset("tiny")  # the teacher's size: what is tested is that its outputs are learnt
    res = distill(spec, teacher, data, DistillConfig(epochs=10, batch_size=16, seed=0, threads=1, lr=1e-2,
                                                     label_weight=0.0, augment=False))
    zt = torch.from_numpy(predict_logits(teacher, data))
    y = torch.full_like(zt, float("nan"))

    def soft_loss(z):  # the distillation loss on the training images, eval mode
        return float(distill_loss(z, zt, y, 2.0, 0.0))

    floor = soft_loss(zt)  # T² × the teacher's own entropy: what a perfect student pays
    excess = lambda model: soft_loss(torch.from_numpy(predict_logits(model, data))) - floor  # noqa: E731
    assert excess(res.model) < 0.75 * excess(build_model(spec, seed=0).eval())  # T² × KL to the teacher
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert parameter_count(build_model(_student())) < parameter_count(teacher)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, data, teacher):
    straight = distill(_student(), teacher, data, CFG)
    first = distill(_student(), teacher, data, CFG, checkpoint_dir=tmp_path, stop_after_epoch=1)
    assert len(first.history) == 1 and (tmp_path / "last.safetensors").is_file()
    with safe_open(str(tmp_path / "last.safetensors"), "pt") as f:  # the job's name, as checkpoints hold it
        fingerprint = json.loads(f.metadata()["cxr_decide_ckpt"])["fingerprint"]
    cfg = {k: v for k, v in asdict(CFG).items() if k != "threads"}
    assert fingerprint == json.dumps({"kind": "distill", "spec": _student().digest(), "data": data.digest(), "cfg": cfg,
                                      "teacher": tensors_digest(teacher.state_dict()), "init": None}, sort_keys=True)
    resumed = distill(_student(), teacher, data, CFG, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1 and [h["epoch"] for h in resumed.history] == [2]
    assert tensors_digest(resumed.model.state_dict()) == tensors_digest(straight.model.state_dict())
    other = distill(_student(), teacher, data, DistillConfig(epochs=2, batch_size=32, seed=3, threads=1,
                                                             temperature=4.0), checkpoint_dir=tmp_path)
    assert other.resumed_from_epoch == 0  # another temperature is another job


def test_config_is_the_house_config_plus_temperature_and_label_weight():
    assert isinstance(CFG, TrainConfig) and DistillConfig().lr == 2e-3 and TrainConfig().lr == 4e-3
    assert set(asdict(CFG)) == set(asdict(TrainConfig())) | {"temperature", "label_weight"}
    for bad, field in (({"epochs": 0}, "epochs"), ({"lr": 1.5}, "lr"), ({"temperature": 0.0}, "temperature"),
                       ({"label_weight": -0.1}, "label_weight")):
        with pytest.raises(InvalidInput) as exc:
            DistillConfig(**bad)
        assert exc.value.field == field


def test_mismatched_student_is_refused(data, teacher):
    with pytest.raises(InvalidInput, match="outputs"):
        distill(_student().model_copy(update={"pathologies": ("A", "B")}), teacher, data, CFG)
    with pytest.raises(InvalidInput, match="resolution"):
        distill(_student().model_copy(update={"resolution": 64}), teacher, data, CFG)
