"""A process killed in the middle of a registration leaves no half-written version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from registry import audit, repo
from registry.session import session_scope
from tests.registry import factories as f

CHILD = textwrap.dedent("""
    import sys, time
    from registry import repo
    from registry.session import session_scope
    with session_scope() as s:
        repo.derive_version(s, int(sys.argv[1]), thresholds={"Effusion": 0.9}, reason="will be killed")
        s.flush()
        print("READY", flush=True)  # version, lineage and audit rows are written, not committed
        time.sleep(120)
""")


def test_kill_mid_transaction_leaves_nothing(db_url):
    with session_scope() as s:
        parent = f.version(s)
        before = len(audit.list_events(s))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(parent.id)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with session_scope(read_only=True) as s:
        assert [v.version for v in repo.list_versions(s)] == [1]
        res = audit.verify_chain(s)
        assert res.ok and res.checked == before
    with session_scope() as s:  # the killed writer's locks are gone: the next registration goes through
        assert repo.derive_version(s, parent.id, thresholds={"Effusion": 0.7}).version == 2
