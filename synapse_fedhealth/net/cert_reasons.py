"""The `details.reason` values of tls.certificate (SPEC 4.3), shared with
the offline analysis of the certificate files (`checks.config_certs`): keep
these exact.

A module of their own so that the config checks, which run at start-up,
name them without importing the TLS prober (`net.tls`).
"""

from __future__ import annotations

REASON_EXPIRED = "expired"
REASON_NOT_YET_VALID = "not_yet_valid"
REASON_SELF_SIGNED = "self_signed"
REASON_UNTRUSTED_ISSUER = "untrusted_issuer"
REASON_MISSING_INTERMEDIATE = "missing_intermediate"
REASON_NAME_MISMATCH = "name_mismatch"
CERT_REASONS = (
    REASON_EXPIRED,
    REASON_NOT_YET_VALID,
    REASON_SELF_SIGNED,
    REASON_UNTRUSTED_ISSUER,
    REASON_MISSING_INTERMEDIATE,
    REASON_NAME_MISMATCH,
)
