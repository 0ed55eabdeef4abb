"""What a model costs to run: parameters, bytes on disk, CPU milliseconds per image — and on what CPU.

Latency on a shared machine is noisy, so a latency figure alone means little:
`measure_latency` times several variants *side by side* — every repeat runs
each variant once at each batch size, in an order that rotates between
repeats — and reports medians, so ratios between variants are meaningful even
when the absolute numbers drift. Every latency figure carries the CPU it was
measured on (`cpu_facts`: model name, logical cores, threads used, and the
SIMD flags that decide whether float16 or int8 can be fast: AVX2, FMA, F16C,
AVX-512, VNNI, AMX).

The vocabulary is the footprint report's (lower is better): `parameters`,
`parameter_fraction` (vs the parent), `size_mb` (10⁶ bytes of the weights
file), `latency_ms` (per image at a batch size).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.model import build_model, parameter_count
from cxr.spec import ArchSpec
from cxr.weights import Weights

#: /proc/cpuinfo flags worth recording next to a latency figure.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_fp16", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")

Runner = Callable[[np.ndarray], Any]


def cpu_facts(threads: int | None = None) -> dict[str, Any]:
    """The CPU a latency was measured on: model name, logical cores, threads, SIMD flags present, and the
    1-minute load average (on a machine with more runnable processes than cores, threads > 1 spend their
    time waiting for each other at every operator's barrier: time with 1 thread there)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    try:  # how busy the machine was: more runnable processes than cores make multi-threaded timings erratic
        load = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        load = None
    return {"cpu": name, "logical_cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "flags": [f for f in SIMD_FLAGS if f in flags], "torch": torch.__version__, "load_1min": load}


def backbone_parameters(spec: ArchSpec) -> int:
    m = build_model(spec)
    return parameter_count(m) - parameter_count(m.classifier)


def static_footprint(w: Weights, size_bytes: int) -> dict[str, Any]:
    """What the weights file itself shows: parameters (of the float architecture), bytes, dtype, runtime."""
    m = build_model(w.spec)
    n = parameter_count(m)
    return {"parameters": n, "backbone_parameters": n - parameter_count(m.classifier),
            "size_bytes": int(size_bytes), "size_mb": round(size_bytes / 1e6, 4),
            "dtype": w.spec.dtype, "runtime": w.spec.runtime}


def torch_runner(model: torch.nn.Module) -> Runner:
    model.eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def ort_runner(session: Any, output: str = "logits") -> Runner:
    return lambda x: session.run([output], {"image": x})


def measure_latency(runners: dict[str, Runner], shape: tuple[int, int, int], batches: tuple[int, ...] = (1, 32), *,
                    repeats: int = 5, warmup: int = 1, seed: int = 0, threads: int | None = None
                    ) -> dict[str, Any]:
    """Median CPU ms/image of each runner at each batch size, measured interleaved (see the module docstring).

    `shape` is one image's (C, H, W); inputs are random pixels in [-1024, 1024] (latency does not
    depend on the values). Returns {"ms_per_image": {name: {batch: ms}}, "repeats", "cpu": cpu_facts}.
    `threads` sets torch's thread count for the measurement (restored afterwards).
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(seed)
        xs = {b: ((rng.random((b, *shape), dtype=np.float32) * 2 - 1) * 1024) for b in batches}
        names = list(runners)
        for b in batches:
            for n in names:
                for _ in range(warmup):
                    runners[n](xs[b])
        times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in names}
        for rep in range(repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for b in batches:
                for n in order:
                    t0 = time.perf_counter()
                    runners[n](xs[b])
                    times[n][b].append((time.perf_counter() - t0) * 1000 / b)
        ms = {n: {b: round(float(np.median(times[n][b])), 4) for b in batches} for n in names}
        return {"ms_per_image": ms, "repeats": repeats, "cpu": cpu_facts(threads or before)}
    finally:
        torch.set_num_threads(before)


def latency_record(measured: dict[str, Any], name: str, parent: str | None, batch: int) -> dict[str, Any]:
    """The `latency_ms` entry of a footprint: the value at `batch`, every batch, the parent's, the CPU."""
    ms = measured["ms_per_image"]
    out: dict[str, Any] = {"value": ms[name][batch], "batch": batch,
                           "by_batch": {str(b): v for b, v in ms[name].items()}, "cpu": measured["cpu"],
                           "repeats": measured["repeats"]}
    if parent is not None:
        out["parent_by_batch"] = {str(b): v for b, v in ms[parent].items()}
        out["ratio"] = round(ms[name][batch] / ms[parent][batch], 4) if ms[parent][batch] else None
    return out
