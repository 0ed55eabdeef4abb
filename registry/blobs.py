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
from pathlib import Path

from cxr.errors import IntegrityFailure, InvalidInput, NotFound
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
