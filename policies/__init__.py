"""Decision policies: the schema, the bundled default, loading, validation and the digest.

`load_policy()` with no path returns the bundled `default.toml` (found through
importlib.resources, so it works from a wheel). Every failure is an `InvalidInput`
whose field is the dotted path of the offending key (`treatments.head_retrain.prior_cost`),
which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from cxr.errors import InvalidInput, NotFound
from policies.schema import (
    BUILTIN_TREATMENTS,
    CALIBRATION_METHODS,
    ISSUE_KINDS,
    SLO,
    CalibrationPolicy,
    CostModel,
    GatePolicy,
    Learning,
    Policy,
    Preconditions,
    SLOs,
    TreatmentPolicy,
)

__all__ = [
    "BUILTIN_TREATMENTS",
    "CALIBRATION_METHODS",
    "ISSUE_KINDS",
    "SLO",
    "CalibrationPolicy",
    "CostModel",
    "GatePolicy",
    "Learning",
    "Policy",
    "Preconditions",
    "SLOs",
    "TreatmentPolicy",
    "load_policy",
    "parse_policy",
    "policy_digest",
    "validate_policy_file",
]


def _invalid(err: ValidationError, source: str) -> InvalidInput:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (typo?)"
    return InvalidInput(f"{msg}{more} [{source}]", field=field)


def parse_policy(data: dict, source: str = "<policy>") -> Policy:
    """Validate a policy given as a dict; raises `InvalidInput` naming the dotted field."""
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise _invalid(err, source) from None


def validate_policy_file(path: str | Path) -> Policy:
    """Read and validate a TOML policy file; returns the `Policy`.

    Raises `NotFound` for a missing file and `InvalidInput` for bad TOML (field: the file) or
    a schema error (field: the dotted key, e.g. `slos.pathologies.Cardiomegaly.max_fpr`).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"no policy file at {p}", field="policy") from None
    except OSError as err:
        raise InvalidInput(f"cannot read {p}: {err.strerror}", field="policy") from None
    except UnicodeDecodeError as err:
        raise InvalidInput(f"not UTF-8 text (byte {err.start}): a policy is a TOML file", field=str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"not valid TOML: {err}", field=str(p)) from None
    except RecursionError:
        raise InvalidInput("not valid TOML: nested too deeply", field=str(p)) from None
    return parse_policy(data, str(p))


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at `path`, or the bundled default when None; raises like `validate_policy_file`."""
    if path is not None:
        return validate_policy_file(path)
    text = resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8")
    return parse_policy(tomllib.loads(text), "policies/default.toml")


def policy_digest(policy: Policy) -> str:
    """sha256 hex of the policy's canonical JSON (sorted keys, no whitespace, defaults included).

    Not cached on the instance: `model_copy(update=...)` would carry a stale digest along.
    """
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
