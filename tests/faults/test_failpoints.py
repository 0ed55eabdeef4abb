"""The failpoints themselves (`cxr/faults.py`): parsed strictly, inert unless asked, each action does what
it says. (`kill` is exercised by the fault suite, on real processes.)"""

from __future__ import annotations

import errno
import threading

import pytest

from cxr import faults


@pytest.fixture(autouse=True)
def _restore():
    yield
    faults.configure("")


def test_unset_failpoints_do_nothing():
    assert faults.configure("") == {}
    for name in faults.POINTS:
        faults.failpoint(name)  # nothing raised, nothing waited for


def test_the_environment_is_read(monkeypatch):
    monkeypatch.setenv(faults.ENV, " claim = kill , gate=raise,")
    assert faults.configure() == {"claim": "kill", "gate": "raise"}


@pytest.mark.parametrize("spec", ["claim", "nowhere=kill", "claim=explode", "claim=sleep:soon", "claim=wait:",
                                  "claim=kill,gate"])
def test_a_bad_spec_is_refused_with_what_is_allowed(spec):
    with pytest.raises(ValueError, match=faults.ENV):
        faults.configure(spec)
    assert faults.configure("") == {}


def test_raise_and_enospc_fail_only_at_their_point():
    faults.configure("gate=raise,blob_write=enospc")
    faults.failpoint("claim")
    with pytest.raises(RuntimeError, match="failpoint gate"):
        faults.failpoint("gate")
    with pytest.raises(OSError) as err:
        faults.failpoint("blob_write")
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)


def test_sleep_goes_on():
    faults.configure("decision=sleep:0")
    faults.failpoint("decision")


def test_wait_announces_itself_and_waits_for_its_release(tmp_path):
    release = tmp_path / "go"
    faults.configure(f"registration=wait:{release}")
    done = threading.Event()
    t = threading.Thread(target=lambda: (faults.failpoint("registration"), done.set()))
    t.start()
    try:
        waiting = tmp_path / "go.waiting"
        for _ in range(600):
            if waiting.exists():
                break
            threading.Event().wait(0.05)
        assert waiting.read_text().startswith("registration ")
        assert not done.is_set()  # it stands still until released
    finally:
        release.touch()
        t.join(30)
    assert done.is_set()
