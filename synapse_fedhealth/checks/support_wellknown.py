"""`client.support_well_known` (MSC1929, in the client-server spec since
v1.10): `/.well-known/matrix/support` tells users and other admins whom to
contact about this server.

Informational: it is optional, so an absent file is `ok` (saying so), and a
present but invalid one is a `warn`. Nothing here can fail the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synapse_fedhealth.checks.http_answer import (
    Headers,
    describe_answer,
    parse_json_object,
    request_details,
)
from synapse_fedhealth.report import CheckResult, ok, skip, warn

SUPPORT_WELL_KNOWN = "client.support_well_known"
SUPPORT_WELL_KNOWN_PATH = "/.well-known/matrix/support"
MAX_CONTACTS_JUDGED = 20  # a hostile file may list millions
MAX_VALUE_CHARS = 200
KNOWN_ROLES = ("m.role.admin", "m.role.security")

FIX_SUPPORT = (
    "Serve /.well-known/matrix/support on {server_name} as a JSON object with "
    '`contacts` (each with a `role` such as "m.role.admin" and a `matrix_id` '
    "or `email_address`) and/or a `support_page` URL, e.g. nginx "
    "`location = /.well-known/matrix/support {{ default_type application/json; "
    'return 200 \'{{"contacts": [{{"matrix_id": "@admin:{server_name}", '
    '"role": "m.role.admin"}}]}}\'; }}`. Or remove it: it is optional.'
)


def _contact_problems(contacts: object) -> list[str]:
    if not isinstance(contacts, list):
        return ["`contacts` is not a list"]
    problems: list[str] = []
    for index, contact in enumerate(contacts[:MAX_CONTACTS_JUDGED]):
        if not isinstance(contact, Mapping):
            problems.append(f"contacts[{index}] is not an object")
            continue
        if not isinstance(contact.get("role"), str):
            problems.append(f"contacts[{index}] has no `role` string")
        matrix_id = contact.get("matrix_id")
        email = contact.get("email_address")
        if not isinstance(matrix_id, str) and not isinstance(email, str):
            problems.append(
                f"contacts[{index}] has neither a `matrix_id` nor an `email_address`"
            )
        elif isinstance(matrix_id, str) and not (
            matrix_id.startswith("@") and ":" in matrix_id
        ):
            problems.append(
                f"contacts[{index}].matrix_id {matrix_id[:MAX_VALUE_CHARS]!r} "
                "is not a user id"
            )
    return problems


def judge_support_well_known(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    server_name: str,
    request: Mapping[str, Any],
) -> CheckResult:
    """Judge the fetched support well-known. Never raises, never fails."""
    details = request_details(request, http_status=status)
    fix = FIX_SUPPORT.format(server_name=server_name)
    if status == 404:
        details["present"] = False
        return ok(
            SUPPORT_WELL_KNOWN,
            f"no support well-known at {server_name} (optional: users and admins "
            "of other servers have no published contact)",
            details=details,
        )
    if status != 200:
        details["reason"] = "http_status"
        return warn(
            SUPPORT_WELL_KNOWN,
            "the support well-known answers " + describe_answer(status, headers, body),
            fix=fix,
            details=details,
        )
    details["present"] = True
    obj, problem = parse_json_object(body)
    problems: list[str] = []
    if obj is None:
        problems.append(f"it is not a JSON object ({problem})")
    else:
        contacts = obj.get("contacts")
        page = obj.get("support_page")
        if contacts is None and page is None:
            problems.append("it has neither `contacts` nor `support_page`")
        if contacts is not None:
            problems += _contact_problems(contacts)
            if isinstance(contacts, list):
                details["contacts"] = len(contacts)
        if page is not None:
            if not isinstance(page, str) or not page.startswith(
                ("https://", "http://")
            ):
                problems.append("`support_page` is not a URL")
            else:
                details["support_page"] = page[:MAX_VALUE_CHARS]
    if problems:
        details["reason"] = "invalid"
        details["problems"] = problems[:MAX_CONTACTS_JUDGED]
        return warn(
            SUPPORT_WELL_KNOWN,
            "the support well-known is invalid: " + "; ".join(problems[:3]),
            fix=fix,
            details=details,
        )
    return ok(
        SUPPORT_WELL_KNOWN,
        f"the support well-known of {server_name} names a contact",
        details=details,
    )


def judge_support_well_known_error(
    reason: str, message: str, *, server_name: str, request: Mapping[str, Any]
) -> CheckResult:
    """No HTTP answer: client.well_known covers that path; this informational
    check only says it could not look."""
    what = "timed out" if reason == "timeout" else f"failed ({reason})"
    details = request_details(request, reason=reason, error=message[:MAX_VALUE_CHARS])
    return skip(
        SUPPORT_WELL_KNOWN,
        f"skipped: fetching the support well-known of {server_name} {what}",
        details=details,
    )
