"""A fork server for `decide` commands: import once, then run each command in a forked child.

Started once per test session (`python -m tests.faults.forkserver`), it imports everything
`decide run` needs (torch, the engine, every treatment plugin) and never touches a database or runs a
tensor operation itself, so forking it is safe. For each request (one JSON line on stdin: args, env,
cwd, output file) it forks a child that takes that environment, re-reads `DECIDE_FAILPOINTS`, and calls
the console script's own entry point (`cli.app:main`) with those args. The child is a real, separate
process — its own pid, its own database connections, killed by a real SIGKILL at a failpoint — that
simply skips the ~5-15 s of imports a fresh `decide` pays on this machine. The server answers one JSON
line per request with the child's exit status (`-9` for SIGKILL, as `subprocess` reports it).

`FAULTS_CLOCK_OFFSET_S` in a request's environment runs that child with its clock (`cxr.clock`, the one
every timestamp and every check against now reads) moved by so many seconds: what it writes (heartbeats,
claims, decisions, audit events) and what it compares with now (liveness, a report's window) come from a
clock that jumped — a worker on a machine whose clock is wrong, as the clock tests need.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback


def _preload() -> None:
    import cli.app  # noqa: F401 - registers every command module
    import decision.engine
    import decision.registration  # noqa: F401 - torch-level code a run reaches
    from treatments.plugins import load_treatments

    load_treatments()  # imports every plugin module, built-in and third-party


def _child(req: dict) -> None:
    code = 1
    try:
        fd = os.open(req["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)  # the server's stdin is its request pipe
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        from cxr import faults

        faults.configure()
        if os.environ.get("FAULTS_CLOCK_OFFSET_S"):
            from datetime import timedelta

            from cxr import clock

            clock.set_offset(timedelta(seconds=float(os.environ["FAULTS_CLOCK_OFFSET_S"])))
        # Ctrl-C raises KeyboardInterrupt, as in a `decide` started in a terminal — also when the test session
        # itself runs in the background, where the shell starts it (and so every child) ignoring SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["decide", *req["args"]]
        from cli.app import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what a fresh process would print and exit with
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    _preload()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
