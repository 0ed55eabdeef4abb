"""Shared plumbing of the bench scripts: arguments, machine facts, output.

Every script prints a rich table by default and, with --json, one JSON object
holding every figure plus the machine (cores, torch version, device), so that
figures can be compared across commits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="Smaller sizes: finishes in under a minute.")
    p.add_argument("--json", action="store_true", help="Print one JSON object with every figure.")
    return p


def machine() -> dict:
    info = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        from cxr.footprint import cpu_facts

        facts = cpu_facts()  # every latency figure carries the CPU and its SIMD flags (AVX-512 / VNNI / AMX or not)
        info |= {"cpu": facts["cpu"], "cpu_flags": facts["flags"], "load_1min": facts["load_1min"]}
    except ImportError:  # pragma: no cover
        info["torch"] = None
    return info


def output(title: str, rows: list[dict], figures: dict, as_json: bool) -> None:
    """`rows` become the table; `figures` (plus rows and machine) the JSON object."""
    if as_json:
        print(json.dumps({"bench": title, "machine": machine(), "rows": rows, **figures}, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        t.add_column(c, justify="right" if all(isinstance(r.get(c), int | float) for r in rows) else "left")
    for r in rows:
        t.add_row(*[f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    con = Console()
    con.print(t)
    for k, v in figures.items():
        con.print(f"{k}: {v}")
    m = machine()
    con.print(f"[dim]{m['cores']} cores ({m.get('cpu', '?')}; flags {' '.join(m.get('cpu_flags', [])) or '?'}), "
              f"torch {m.get('torch')}, {m.get('device')}, load {m.get('load_1min')}[/]")
