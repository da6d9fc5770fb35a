"""The "insider" checks: what only a check running inside the server can do,
because it needs our own key, config or a resource of ours (SPEC 4.4, 4.5).

Pure logic, no I/O: the runner's family sends the requests built here and
hands the answers to the `judge_*` functions, which turn any answer (any
status, any bytes, any JSON shape) into a `CheckResult`.
"""

from __future__ import annotations

from synapse_fedhealth.checks.client_wellknown import (
    CLIENT_WELL_KNOWN,
    CLIENT_WELL_KNOWN_PATH,
    judge_client_well_known,
    judge_client_well_known_error,
)
from synapse_fedhealth.checks.forwarded import (
    ECHO_PATH,
    FORWARDED_HEADERS,
    EchoRecord,
    judge_forwarded_headers,
    judge_forwarded_headers_error,
)
from synapse_fedhealth.checks.keys_local import (
    KEY_MATCHES_LOCAL,
    judge_key_matches_local,
)
from synapse_fedhealth.checks.notary import (
    NOTARY,
    NOTARY_QUERY_PATH,
    NotaryPlan,
    build_notary_query,
    judge_notary_answer,
    judge_notary_error,
    notary_minimum_valid_until_ts,
    plan_notary_checks,
)
from synapse_fedhealth.checks.signed_request import (
    SIGNED_REQUEST,
    SignedRequest,
    build_signed_request,
    judge_signed_request,
    judge_signed_request_error,
    signed_request_precheck,
)

INSIDER_CHECK_IDS: tuple[str, ...] = (
    KEY_MATCHES_LOCAL,
    SIGNED_REQUEST,
    NOTARY,
    FORWARDED_HEADERS,
    CLIENT_WELL_KNOWN,
)

__all__ = [
    "CLIENT_WELL_KNOWN",
    "CLIENT_WELL_KNOWN_PATH",
    "ECHO_PATH",
    "FORWARDED_HEADERS",
    "INSIDER_CHECK_IDS",
    "KEY_MATCHES_LOCAL",
    "NOTARY",
    "NOTARY_QUERY_PATH",
    "SIGNED_REQUEST",
    "EchoRecord",
    "NotaryPlan",
    "SignedRequest",
    "build_notary_query",
    "build_signed_request",
    "judge_client_well_known",
    "judge_client_well_known_error",
    "judge_forwarded_headers",
    "judge_forwarded_headers_error",
    "judge_key_matches_local",
    "judge_notary_answer",
    "judge_notary_error",
    "judge_signed_request",
    "judge_signed_request_error",
    "notary_minimum_valid_until_ts",
    "plan_notary_checks",
    "signed_request_precheck",
]
