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


def test_gc_removes_only_old_unregistered_files_and_records_it(db_url):
    import os
    import time

    from registry import audit, repo
    from registry.session import session_scope
    from tests.registry import factories as f

    home = get_settings().home_dir
    with session_scope() as s:
        kept = f.version(s, payload=b"registered weights")
    orphan = blobs.put_bytes(b"written, then the registration failed")
    young = blobs.put_bytes(b"a registration still in flight")
    temp = home / "blobs" / orphan.digest[:2] / f".{orphan.digest[:16]}.x1y2.tmp"
    temp.write_bytes(b"half a blob")
    foreign = home / "blobs" / "README"  # not ours: never touched
    foreign.write_text("x")
    old = time.time() - 2 * 3600
    for p in (orphan.path, temp):
        os.utime(p, (old, old))

    with session_scope() as s:
        found, freed = repo.collect_garbage(s)  # dry run
    assert {o.path for o in found} == {blobs.relative_path(orphan.digest), str(temp.relative_to(home))}
    assert {o.kind for o in found} == {"blob", "temp"} and freed == 0 and os.path.exists(orphan.path)

    with session_scope() as s:
        found, freed = repo.collect_garbage(s, apply=True)
    assert freed == sum(o.size for o in found) > 0
    assert not os.path.exists(orphan.path) and not temp.exists()
    assert os.path.exists(young.path) and foreign.exists()
    with session_scope(read_only=True) as s:
        assert blobs.get_bytes(kept.weights_digest) == b"registered weights"
        [event] = [e for e in audit.list_events(s) if e.action == "blobs.gc"]
        assert event.new["removed"] == 2 and audit.verify_chain(s).ok
        with pytest.raises(InvalidInput):
            repo.collect_garbage(s, min_age_seconds=-1)
