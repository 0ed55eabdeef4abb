"""`decide phantom`, `train`, `predict`, `import-weights` through the CLI."""

import json

import pytest
import torch
import torchxrayvision as xrv
from typer.testing import CliRunner

from cli.app import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph")
    res = _run("phantom", "--out", str(out), "--n", "40", "--resolution", "32", "--json")
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_phantom_writes_pngs_and_csv(phantom_dir):
    out, summary = phantom_dir
    assert summary["n"] == 40 and len(list((out / "images").glob("*.png"))) == 40
    assert (out / "labels.csv").read_text().startswith("image,Patient ID,View Position,site,Atelectasis")


def test_train_then_predict(tmp_path, phantom_dir):
    out, _ = phantom_dir
    weights = tmp_path / "m.safetensors"
    res = _run("train", "--out", str(weights), "--data", f"folder:{out}", "--spec", "tiny",
               "--epochs", "1", "--n", "30", "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["weights_sha256"] and len(body["epochs"]) == 1
    pngs = sorted((out / "images").glob("*.png"))[:2]
    res = _run("predict", *map(str, pngs), "--weights", str(weights), "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 2 and 0.0 <= rows[0]["scores"]["Cardiomegaly"]["probability"] <= 1.0
    assert all(not s["validated"] and s["positive"] is None for s in rows[0]["scores"].values())
    table = _run("predict", str(pngs[0]), "--weights", str(weights))  # no operating points: nothing is a finding
    assert table.exit_code == 0 and "top 5 outputs" in table.stdout and "nothing validated" in table.stdout


def test_predict_missing_image_exits_2_with_one_line(tmp_path, phantom_dir):
    out, _ = phantom_dir
    weights = tmp_path / "m.safetensors"
    _run("train", "--out", str(weights), "--data", f"folder:{out}", "--spec", "tiny", "--epochs", "1", "--n", "8")
    res = runner.invoke(app, ["predict", str(tmp_path / "nope.png"), "--weights", str(weights)])
    assert res.exit_code == 2
    assert "image file does not exist" in res.output and "Traceback" not in res.output


def test_tampered_weights_are_refused(tmp_path, phantom_dir):
    out, _ = phantom_dir
    weights = tmp_path / "m.safetensors"
    _run("train", "--out", str(weights), "--data", f"folder:{out}", "--spec", "tiny", "--epochs", "1", "--n", "8")
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1
    weights.write_bytes(bytes(data))
    png = next((out / "images").glob("*.png"))
    res = runner.invoke(app, ["predict", str(png), "--weights", str(weights)])
    assert res.exit_code == 1 and "digest mismatch" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--out", "x.safetensors", "--spec", "resnet"], "spec"),
        (["train", "--out", "x.safetensors", "--data", "s3:bucket"], "source"),
        (["phantom", "--out", "o", "--site", "mars"], "site"),
    ],
)
def test_bad_input_exits_2_naming_the_field(args, needle):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert needle in res.output


def test_import_weights_requires_trust_for_pickles(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "xrv.pt"
    torch.save(xrv.models.DenseNet(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, bn_size=2), path)
    res = runner.invoke(app, ["import-weights", str(path), "--out", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and "--trust-pickle" in res.output
    res = runner.invoke(app, ["import-weights", str(path), "--out", str(tmp_path / "o.safetensors"),
                              "--trust-pickle", "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["unpickled"] and (tmp_path / "o.thresholds.json").is_file()


def test_every_command_has_help():
    for cmd in ("phantom", "train", "predict", "import-weights"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output
