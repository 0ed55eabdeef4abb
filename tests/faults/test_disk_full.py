"""A full disk while the candidate's weights blob is written: nothing of the candidate is registered,
no temp file is left, the run is recorded `failed` with the reason, the report is open again, and the
next `decide run` (room made) resolves it.

Two ways: an injected `OSError(ENOSPC)` at the `blob_write` failpoint, and a real full file system —
a tmpfs mounted over `DECIDE_HOME/blobs`, sized to hold the blobs already there and one page more, so
the candidate's write fails part-way with the kernel's own ENOSPC (needs root for `mount`; skipped
otherwise, with the reason).
"""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from registry.entities import DecisionStatus, ReportStatus, RunOutcome
from tests.faults.fault_env import check_settled, check_whole, recover

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]
PAGE = 4096


def _no_space_left(fh, proc) -> str:
    """What a blob write that ran out of space must leave."""
    assert proc.returncode == 1, proc.stdout[-4000:]  # the work ran and failed: exit 1, no traceback
    assert "Traceback" not in proc.stdout and "No space left on device" in proc.stdout, proc.stdout[-4000:]
    st = check_whole(fh)
    [run] = st.runs
    assert run.outcome == RunOutcome.failed and "recording the candidate failed: OSError" in run.error_text
    assert "No space left on device" in run.error_text and run.output_version_id is None
    assert [v.version for v in st.versions] == [1] and st.production == "cxr:1"
    assert [d.status for d in st.decisions] == [DecisionStatus.exhausted]
    assert [r.status for r in st.reports] == [ReportStatus.open]  # a failed run: the report is open again
    assert not [p for p in (fh.home / "blobs").rglob("*") if p.name.endswith(".tmp")], "a temp file was left"
    return run.error_text


def test_enospc_injected_during_the_blob_write(fault_home):
    proc = fault_home.decide("run", "--yes", failpoints="blob_write=enospc")
    assert "(failpoint blob_write)" in _no_space_left(fault_home, proc)
    recover(fault_home)
    check_settled(fault_home, 1)


@pytest.fixture
def full_blob_store(fault_home, tmp_path):
    """`DECIDE_HOME/blobs` on a tmpfs with room for what it holds plus one page (the candidate needs five)."""
    blobs = fault_home.home / "blobs"
    kept = tmp_path / "blobs-before"
    shutil.move(blobs, kept)
    blobs.mkdir()
    used = sum(math.ceil(p.stat().st_size / PAGE) * PAGE for p in kept.rglob("*") if p.is_file())
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used + PAGE},mode=0755", "tmpfs", str(blobs)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        shutil.rmtree(blobs)
        shutil.move(kept, blobs)
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        shutil.copytree(kept, blobs, dirs_exist_ok=True)
        yield blobs
    finally:
        subprocess.run(["umount", "-l", str(blobs)], check=False)


def test_a_real_full_file_system_during_the_blob_write(fault_home, full_blob_store):
    proc = fault_home.decide("run", "--yes")
    assert "failpoint" not in _no_space_left(fault_home, proc)  # the kernel's own ENOSPC
    # room is made: the store moves to the ordinary disk, with everything it held
    held = fault_home.home.parent / "blobs-full"
    shutil.copytree(full_blob_store, held)
    subprocess.run(["umount", str(full_blob_store)], check=True)
    shutil.copytree(held, full_blob_store, dirs_exist_ok=True)
    recover(fault_home)
    check_settled(fault_home, 1)
