"""Head retrain on cached features: full-batch L-BFGS vs 20 epochs of minibatch Adam.

Two problems: (a) DenseNet121-sized — 10,000 feature vectors of 1,024 dims, 18
outputs, labels drawn with NIH prevalences from a logistic model of correlated,
ReLU-like features; (b) the compact phantom baseline's real pooled features
(trained here first unless --skip-phantom). Reported: wall seconds and held-out
validation loss of each optimiser, from the same starting head.

    python bench/head_retrain.py [--quick] [--json] [--skip-phantom]
"""

from __future__ import annotations

import time

import _common
import numpy as np
import torch

from treatments.head_retrain import HeadRetrainParams, fit_head

PREV = np.array([0.103, 0.042, 0.177, 0.047, 0.021, 0.022, 0.015, 0.119, 0.013, 0.030, 0.025, 0.057, 0.052,
                 0.002, 0.02, 0.02, 0.1, 0.05])


def bce(x, y, w, b) -> float:
    z = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))
    yt = torch.from_numpy(np.nan_to_num(y))
    m = torch.from_numpy((~np.isnan(y)).astype(np.float32))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")
    return float((loss * m).sum() / m.sum())


def adam(x, y, w0, b0, epochs=20, batch=256, lr=1e-3, seed=0):
    torch.manual_seed(seed)
    X, Y = torch.from_numpy(x), torch.from_numpy(np.nan_to_num(y))
    M = torch.from_numpy((~np.isnan(y)).astype(np.float32))
    W = torch.from_numpy(w0.copy()).requires_grad_(True)
    B = torch.from_numpy(b0.copy()).requires_grad_(True)
    opt = torch.optim.Adam([W, B], lr=lr)
    t = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), batch):
            idx = perm[i : i + batch]
            z = torch.nn.functional.linear(X[idx], W, B)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, Y[idx], reduction="none") * M[idx]).sum()
            opt.zero_grad()
            (loss / M[idx].sum().clamp_min(1)).backward()
            opt.step()
    return W.detach().numpy(), B.detach().numpy(), time.perf_counter() - t


def synthetic(n: int, f: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 32)).astype(np.float32)
    mix = rng.standard_normal((32, f)).astype(np.float32) / np.sqrt(32)
    x = np.maximum(latent @ mix + 0.3 * rng.standard_normal((n, f)).astype(np.float32), 0)
    true_w = rng.standard_normal((len(PREV), 32)).astype(np.float32) * 0.8
    logits = latent @ true_w.T + np.log(PREV / (1 - PREV))
    y = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return x.astype(np.float32), y


def run_case(name, xtr, ytr, xva, yva, w0, b0, max_iter, l2):
    w_l, b_l, info = fit_head(xtr, ytr, w0, b0, np.ones_like(ytr), l2=l2, max_iter=max_iter)
    w_a, b_a, t_a = adam(xtr, ytr, w0, b0)
    return {
        "problem": name,
        "n_train": len(xtr),
        "dims": xtr.shape[1],
        "l2": l2,
        "lbfgs_s": round(info["seconds"], 3),
        "lbfgs_iterations": info["iterations"],
        "lbfgs_val_loss": round(bce(xva, yva, w_l, b_l), 5),
        "adam20_s": round(t_a, 3),
        "adam20_val_loss": round(bce(xva, yva, w_a, b_a), 5),
        "start_val_loss": round(bce(xva, yva, w0, b0), 5),
    }


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--skip-phantom", action="store_true")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--l2", type=float, default=HeadRetrainParams().l2_to_parent, help="proximal penalty")
    args = p.parse_args()
    n = 2000 if args.quick else 10_000
    x, y = synthetic(n + 3000, 1024)
    rng = np.random.default_rng(1)
    w0 = (rng.standard_normal((18, 1024)) * 0.01).astype(np.float32)
    b0 = np.zeros(18, np.float32)
    rows = [run_case("densenet121-sized synthetic", x[:n], y[:n], x[n:], y[n:], w0, b0, args.max_iter, args.l2)]
    if not args.skip_phantom and not args.quick:
        from cxr.data import phantom_dataset
        from cxr.features import extract_features
        from cxr.phantom import PhantomConfig
        from cxr.spec import preset
        from cxr.train import TrainConfig, train

        spec = preset("compact")
        tr = phantom_dataset(PhantomConfig(n=4000, resolution=64))
        va = phantom_dataset(PhantomConfig(split="calibration", n=2000, resolution=64))
        model = train(spec, tr, TrainConfig(epochs=2)).model
        ftr, fva = extract_features(model, tr), extract_features(model, va)
        w = model.classifier.weight.detach().numpy().copy()
        b = model.classifier.bias.detach().numpy().copy()
        rows.append(run_case("compact phantom features", ftr, tr.labels, fva, va.labels, w, b, args.max_iter, args.l2))
    _common.output("head retrain: L-BFGS vs minibatch Adam (20 epochs)", rows, {}, args.json)


if __name__ == "__main__":
    main()
