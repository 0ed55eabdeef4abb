"""The content-addressed blob store: atomic writes, dedup, and verification on every read."""

from __future__ import annotations

import pytest

from cxr.errors import IntegrityFailure, InvalidInput, NotFound
from registry import blobs
from registry.settings import get_settings


def test_put_get_roundtrip_and_layout():
    ref = blobs.put_bytes(b"abc")
    home = get_settings().home_dir
    assert ref.path == str(home / "blobs" / ref.digest[:2] / ref.digest)
    assert ref.size == 3 and blobs.get_bytes(ref.digest) == b"abc"
    assert blobs.relative_path(ref.digest) == f"blobs/{ref.digest[:2]}/{ref.digest}"
    assert not [p for p in (home / "blobs").rglob("*.tmp")]  # no temp file left behind


def test_same_bytes_are_stored_once():
    a, b = blobs.put_bytes(b"same"), blobs.put_bytes(b"same")
    assert a == b and len(list((get_settings().home_dir / "blobs").rglob("*"))) == 2  # one folder, one file


def test_changed_bytes_are_refused_on_read():
    ref = blobs.put_bytes(b"weights")
    with open(ref.path, "r+b") as fh:
        fh.write(b"W")
    with pytest.raises(IntegrityFailure, match="changed on disk"):
        blobs.get_bytes(ref.digest)
    blobs.put_bytes(b"weights")  # re-putting the good bytes repairs it
    assert blobs.get_bytes(ref.digest) == b"weights"


def test_missing_and_malformed_digests():
    with pytest.raises(NotFound):
        blobs.get_bytes("a" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "abc"):
        with pytest.raises(InvalidInput):
            blobs.get_bytes(bad)
