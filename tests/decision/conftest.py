"""Fixtures of the decision tests: a one-version registry for report-ingest tests (SQLite, PostgreSQL)."""

from tests.decision.report_registry import ingest_registry, on_registry  # noqa: F401
