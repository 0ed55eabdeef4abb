"""Training throughput and inference images/s: the compact config and DenseNet121 at 224².

    python bench/train.py [--quick] [--json] [--threads N]
"""

from __future__ import annotations

import time

import _common
import numpy as np
import torch

from cxr.model import build_model, parameter_count
from cxr.spec import preset
from cxr.train import masked_bce


def measure(name: str, batch: int, train_steps: int, infer_batches: int, device: str) -> dict:
    spec = preset(name)
    model = build_model(spec, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = (torch.rand(batch, 1, spec.resolution, spec.resolution, device=device) * 2 - 1) * 1024
    y = (torch.rand(batch, spec.num_classes, device=device) < 0.1).float()
    model.train()
    for i in range(train_steps + 1):
        if i == 1:  # the first step warms up allocators and kernels
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        masked_bce(model(x), y).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    train_ips = batch * train_steps / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(infer_batches):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        infer_ips = batch * infer_batches / (time.perf_counter() - t0)
    return {
        "model": name,
        "resolution": spec.resolution,
        "parameters": parameter_count(model),
        "batch": batch,
        "train_images_per_s": round(train_ips, 1),
        "inference_images_per_s": round(infer_ips, 1),
        "inference_ms_per_image": round(1000 / infer_ips, 3),
    }


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    gpu = args.device == "cuda"
    rows = [
        measure("compact", 64, 3 if args.quick else 20, 3 if args.quick else 20, args.device),
        measure("densenet121", 64 if gpu else 16, (3 if args.quick else 20) if gpu else (1 if args.quick else 4),
                (3 if args.quick else 20) if gpu else (1 if args.quick else 4), args.device),
    ]
    _common.output("training and inference throughput", rows, {"device": args.device}, args.json)


if __name__ == "__main__":
    main()
