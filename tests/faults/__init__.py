"""Fault injection: `decide run` killed at each step of the loop, a PostgreSQL connection terminated
mid-transaction, a full disk during a blob write, a clock that jumps — and after each, the registry
is whole and the next pass finishes the work (failpoints: `cxr/faults.py`)."""
