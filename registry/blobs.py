"""Content-addressed artifact store: `DECIDE_HOME/blobs/<aa>/<sha256>`.

A blob's name is the sha256 of its bytes, so equal artifacts are stored once
(a calibration-only version reuses its parent's weights blob) and a changed
file is detected on every read: `get_bytes` recomputes the digest and raises
`IntegrityFailure` rather than hand corrupted weights to a model. Writes go
through a temp file, fsync and rename, so a reader sees a whole blob or none.

Only bytes and digests here: the registry does not parse weights (that is
`cxr/weights.py`, above which the registry must not reach).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import IntegrityFailure, InvalidInput, NotFound
from cxr.faults import failpoint
from cxr.files import atomic_write
from registry.entities import BlobRef
from registry.repo_common import settings
from registry.settings import within_home

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _home(home: Path | None) -> Path:
    return (home or settings().home_dir).expanduser().resolve()


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise InvalidInput(f"not a sha256 hex digest: {digest!r}", field="digest")
    return digest


def relative_path(digest: str) -> str:
    """Where a blob lives relative to DECIDE_HOME (what the `blobs` table stores)."""
    check_digest(digest)
    return f"blobs/{digest[:2]}/{digest}"


def blob_path(digest: str, home: Path | None = None) -> Path:
    check_digest(digest)
    return within_home(_home(home), "blobs", digest[:2], digest)


def put_bytes(data: bytes, home: Path | None = None) -> BlobRef:
    """Store `data` (once); return its digest, size and absolute path.

    An existing blob with the right digest is kept; one whose bytes changed is
    replaced by the good bytes we hold.
    """
    digest = sha256_bytes(data)
    path = blob_path(digest, home)
    if not (path.is_file() and path.stat().st_size == len(data) and sha256_bytes(path.read_bytes()) == digest):
        failpoint("blob_write")
        atomic_write(path, data)
    return BlobRef(digest=digest, size=len(data), path=str(path))


def put_file(src: str | Path, home: Path | None = None) -> BlobRef:
    p = Path(src)
    if not p.is_file():
        raise NotFound("no such file", field=str(p))
    return put_bytes(p.read_bytes(), home)


def get_bytes(digest: str, home: Path | None = None) -> bytes:
    """Read a blob and verify it; raise `NotFound` or `IntegrityFailure`."""
    path = blob_path(digest, home)
    if not path.is_file():
        raise NotFound(f"blob {digest[:12]}… is not in the store ({path})", field="blob")
    data = path.read_bytes()
    found = sha256_bytes(data)
    if found != digest:
        raise IntegrityFailure(
            f"blob {digest[:12]}… changed on disk (now {found[:12]}…): refusing to use it; restore it from a backup"
        )
    return data


def has_blob(digest: str, home: Path | None = None) -> bool:
    return blob_path(digest, home).is_file()


# -- garbage collection ------------------------------------------------------------------------
@dataclass(frozen=True)
class Orphan:
    """A file under `blobs/` that no `blobs` row names: a registration that failed after writing its
    blob, or a temp file a killed writer left behind."""

    path: str  # relative to DECIDE_HOME
    size: int
    age_seconds: float
    kind: str  # "blob" | "temp"


def find_orphans(known: set[str], home: Path | None = None, *, min_age_seconds: float = 3600.0,
                 now: float | None = None) -> list[Orphan]:
    """Files under `DECIDE_HOME/blobs` whose digest is not in `known`, older than `min_age_seconds`.

    The age guard matters: a registration writes its blob *before* its transaction commits the
    row, so a young unknown blob may be one about to be registered. No registration takes an hour.
    """
    root = _home(home)
    base = root / "blobs"
    now = time.time() if now is None else now
    out: list[Orphan] = []
    if not base.is_dir():
        return out
    for path in sorted(base.glob("*/*")):
        if not path.is_file() or path.is_symlink():
            continue
        name = path.name
        if _HEX64.match(name) and path.parent.name == name[:2]:
            if name in known:
                continue
            kind = "blob"
        elif name.startswith(".") and name.endswith(".tmp"):
            kind = "temp"
        else:
            continue  # not ours: never touched
        st = path.stat()
        age = now - st.st_mtime
        if age >= min_age_seconds:
            out.append(Orphan(str(path.relative_to(root)), st.st_size, age, kind))
    return out


def remove_orphans(orphans: list[Orphan], home: Path | None = None) -> int:
    """Delete the given orphans (each path re-checked to lie directly in the store); return bytes freed."""
    store = _home(home) / "blobs"
    freed = 0
    for o in orphans:
        path = _home(home) / o.path
        if path.is_symlink() or path.resolve().parent.parent != store:
            raise InvalidInput(f"not a blob store path: {o.path}", field="path")
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed
