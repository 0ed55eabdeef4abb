"""Install a treatment plugin the way pip lays one out — a module plus a .dist-info whose
entry_points.txt names it in `cxr_decide.treatments` — so tests reach it through the same door
as a third party's package (put `where` on sys.path or PYTHONPATH)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def install_plugin(where: Path, body: str, module: str, name: str, cls: str = "Toy") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{module}.py").write_text(textwrap.dedent(body))
    info = where / f"{module}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cxr_decide.treatments]\n{name} = {module}:{cls}\n")
    return where
