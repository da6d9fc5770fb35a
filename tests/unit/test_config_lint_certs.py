"""config.tls_listener: the certificate and key files of TLS listeners, made with
trustme (CA, intermediate, leaf) and cryptography (self-signed), no network."""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from synapse_fedhealth.checks.config_lint import LintSettings, lint_config
from synapse_fedhealth.homeserver import (
    HomeserverSnapshot,
    ListenerInfo,
    SigningKeyInfo,
)
from synapse_fedhealth.matrix_names import names_cover_host as covers_host
from synapse_fedhealth.pem_files import MAX_PEM_FILE_BYTES
from synapse_fedhealth.report import CheckResult, Status

NOW_DT = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
NOW = NOW_DT.timestamp()
DAY = datetime.timedelta(days=1)

TLS_LISTENER = ListenerInfo(
    index=0,
    type="http",
    port=8448,
    bind_addresses=("0.0.0.0",),
    tls=True,
    resources=frozenset({"federation"}),
)


@pytest.fixture(scope="module")
def root() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def intermediate(root: trustme.CA) -> trustme.CA:
    return root.create_child_ca()


def write(path: Path, *pems: bytes) -> str:
    path.write_bytes(b"".join(pems))
    return str(path)


class Files:
    """Writes a leaf's files into tmp_path and lints a snapshot that uses them."""

    def __init__(self, tmp_path: Path, root: trustme.CA) -> None:
        self.tmp_path = tmp_path
        self.ca_file = write(tmp_path / "ca.pem", root.cert_pem.bytes())

    def lint(
        self,
        cert_pems: list[bytes],
        key_pem: bytes | None,
        *,
        server_name: str = "example.com",
        listeners: tuple[ListenerInfo, ...] = (TLS_LISTENER,),
        federation_custom_ca_list: tuple[str, ...] | None = None,
        **settings: Any,
    ) -> list[CheckResult]:
        cert_file = write(self.tmp_path / "fullchain.pem", *cert_pems)
        key_file = (
            write(self.tmp_path / "key.pem", key_pem) if key_pem is not None else None
        )
        snapshot = HomeserverSnapshot(
            server_name=server_name,
            public_baseurl="https://example.com/",
            listeners=listeners,
            tls_certificate_file=cert_file,
            tls_private_key_file=key_file,
            federation_custom_ca_list=federation_custom_ca_list,
            signing_keys=(SigningKeyInfo(key_id="ed25519:a", verify_key_base64="x"),),
        )
        settings.setdefault("tls_ca_file", self.ca_file)
        results = lint_config(snapshot, LintSettings(now=NOW, **settings))
        return [r for r in results if r.id == "config.tls_listener"]


@pytest.fixture
def files(tmp_path: Path, root: trustme.CA) -> Files:
    return Files(tmp_path, root)


def chain(leaf: trustme.LeafCert) -> list[bytes]:
    return [blob.bytes() for blob in leaf.cert_chain_pems]


def reasons(results: list[CheckResult]) -> list[tuple[Status, str]]:
    return [(r.status, r.details.get("reason", "")) for r in results]


def self_signed(name: str, *, ca: bool = False) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW_DT - 10 * DAY)
        .not_valid_after(NOW_DT + 300 * DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# --- ok ------------------------------------------------------------------------------


def test_full_chain_from_trusted_ca_is_ok(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("example.com")
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert result.status is Status.OK, result
    assert result.details["chain_length"] == 2
    assert result.details["names"] == ["example.com"]
    assert "example.com" in result.summary and "key matches" in result.summary
    assert result.details["listeners"] == [TLS_LISTENER.label]
    json.dumps(result.to_json())


def test_leaf_issued_directly_by_trusted_root_is_ok(
    files: Files, root: trustme.CA
) -> None:
    leaf = root.issue_cert("example.com")
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert result.status is Status.OK


def test_wildcard_san_covers_the_server_name(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("*.example.com")
    [result] = files.lint(
        chain(leaf), leaf.private_key_pem.bytes(), server_name="matrix.example.com:8448"
    )
    assert result.status is Status.OK


def test_ip_san_covers_an_ip_literal_server_name(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("2001:db8::1")
    [result] = files.lint(
        chain(leaf), leaf.private_key_pem.bytes(), server_name="[2001:db8::1]"
    )
    assert result.status is Status.OK


def test_self_signed_trusted_by_tls_ca_file_is_ok(files: Files, tmp_path: Path) -> None:
    cert_pem, key_pem = self_signed("example.com")
    ca_file = write(tmp_path / "private-ca.pem", cert_pem)
    [result] = files.lint([cert_pem], key_pem, tls_ca_file=ca_file)
    assert result.status is Status.OK


def test_several_tls_listeners_share_one_analysis(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("example.com")
    second = ListenerInfo(
        index=1, type="http", port=443, tls=True, resources=frozenset({"client"})
    )
    [result] = files.lint(
        chain(leaf), leaf.private_key_pem.bytes(), listeners=(TLS_LISTENER, second)
    )
    assert result.status is Status.OK
    assert result.details["listeners"] == [TLS_LISTENER.label, second.label]


def test_no_tls_listener_is_skip(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert("example.com")
    plain = ListenerInfo(
        index=0, type="http", port=8008, resources=frozenset({"federation"})
    )
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes(), listeners=(plain,))
    assert result.status is Status.SKIP
    assert "no listener terminates TLS" in result.summary


# --- validity ------------------------------------------------------------------------


def test_expired_leaf_fails(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert(
        "example.com", not_before=NOW_DT - 100 * DAY, not_after=NOW_DT - DAY
    )
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.FAIL, "expired")]
    assert "expired on 2029-12-31" in result.summary
    assert "Renew" in (result.fix or "")


def test_leaf_inside_warning_window_warns(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert(
        "example.com", not_before=NOW_DT - 80 * DAY, not_after=NOW_DT + 5 * DAY
    )
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.WARN, "expiring_soon")]
    assert "in 5 day(s)" in result.summary


def test_warning_window_follows_the_setting(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert(
        "example.com", not_before=NOW_DT - 80 * DAY, not_after=NOW_DT + 5 * DAY
    )
    [result] = files.lint(
        chain(leaf), leaf.private_key_pem.bytes(), cert_expiry_warning_days=3
    )
    assert result.status is Status.OK


def test_not_yet_valid_leaf_fails(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert(
        "example.com", not_before=NOW_DT + DAY, not_after=NOW_DT + 90 * DAY
    )
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.FAIL, "not_yet_valid")]


# --- chain and trust -----------------------------------------------------------------


def test_leaf_without_its_intermediate_fails(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("example.com")
    [result] = files.lint(chain(leaf)[:1], leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.FAIL, "missing_intermediate")]
    assert "fullchain.pem" in (result.fix or "")


def test_leaf_followed_by_the_wrong_intermediate_fails(
    files: Files, root: trustme.CA, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("example.com")
    other = root.create_child_ca()
    [result] = files.lint(
        [chain(leaf)[0], other.cert_pem.bytes()], leaf.private_key_pem.bytes()
    )
    assert reasons([result]) == [(Status.FAIL, "missing_intermediate")]
    assert "do not form a chain" in result.summary


def test_chain_from_another_ca_is_untrusted(files: Files) -> None:
    stranger = trustme.CA().create_child_ca()
    leaf = stranger.issue_cert("example.com")
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.FAIL, "untrusted_issuer")]


def test_self_signed_fails(files: Files) -> None:
    cert_pem, key_pem = self_signed("example.com")
    [result] = files.lint([cert_pem], key_pem)
    assert reasons([result]) == [(Status.FAIL, "self_signed")]
    assert "self-signed" in result.summary


def test_without_tls_ca_file_the_system_store_judges(
    files: Files, root: trustme.CA
) -> None:
    # trustme's root is in no system store: the chain is untrusted there.
    system_store = ssl.get_default_verify_paths().cafile
    if system_store is None:
        pytest.skip("this system has no CA bundle file")
    leaf = root.create_child_ca().issue_cert("example.com")
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes(), tls_ca_file=None)
    assert reasons([result]) == [(Status.FAIL, "untrusted_issuer")]
    assert result.details["trust_store"] == system_store


def test_without_tls_ca_file_federation_custom_ca_list_judges(
    files: Files, root: trustme.CA
) -> None:
    # SPEC 2.1: tls_ca_file defaults to Synapse's federation_custom_ca_list.
    leaf = root.create_child_ca().issue_cert("example.com")
    [result] = files.lint(
        chain(leaf),
        leaf.private_key_pem.bytes(),
        tls_ca_file=None,
        federation_custom_ca_list=("/nonexistent.pem", files.ca_file),
    )
    assert result.status is Status.OK
    assert result.details["trust_store"] == files.ca_file


def test_tls_ca_file_wins_over_federation_custom_ca_list(
    files: Files, tmp_path: Path
) -> None:
    stranger = trustme.CA()
    stranger_file = write(tmp_path / "stranger.pem", stranger.cert_pem.bytes())
    leaf = stranger.create_child_ca().issue_cert("example.com")
    [result] = files.lint(
        chain(leaf),
        leaf.private_key_pem.bytes(),
        federation_custom_ca_list=(stranger_file,),
    )
    assert reasons([result]) == [(Status.FAIL, "untrusted_issuer")]


# --- key -------------------------------------------------------------------------------


def test_key_that_does_not_match_fails(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert("example.com")
    other = intermediate.issue_cert("example.com")
    [result] = files.lint(chain(leaf), other.private_key_pem.bytes())
    assert reasons([result]) == [(Status.FAIL, "key_mismatch")]
    assert "tls_private_key_path" in (result.fix or "")


def test_unset_key_path_fails(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert("example.com")
    [result] = files.lint(chain(leaf), None)
    assert reasons([result]) == [(Status.FAIL, "key_unreadable")]


def test_encrypted_key_fails(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert("example.com")
    key = serialization.load_pem_private_key(
        leaf.private_key_pem.bytes(), password=None
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    [result] = files.lint(chain(leaf), encrypted)
    assert reasons([result]) == [(Status.FAIL, "key_unreadable")]
    assert "passphrase" in result.summary


def test_garbage_key_fails(files: Files, intermediate: trustme.CA) -> None:
    leaf = intermediate.issue_cert("example.com")
    [result] = files.lint(chain(leaf), b"not a key")
    assert reasons([result]) == [(Status.FAIL, "key_unreadable")]


# --- names -------------------------------------------------------------------------------


def test_sans_that_miss_the_server_name_warn(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("matrix.example.com", "www.example.com")
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.WARN, "name_mismatch")]
    assert "matrix.example.com, www.example.com" in result.summary
    assert "well-known" in result.summary
    assert result.details["expected_name"] == "example.com"


def test_wildcard_does_not_cover_the_bare_domain(
    files: Files, intermediate: trustme.CA
) -> None:
    leaf = intermediate.issue_cert("*.example.com")
    [result] = files.lint(chain(leaf), leaf.private_key_pem.bytes())
    assert reasons([result]) == [(Status.WARN, "name_mismatch")]


def test_one_result_per_problem(files: Files) -> None:
    stranger = trustme.CA()
    leaf = stranger.issue_cert(
        "other.org", not_before=NOW_DT - 100 * DAY, not_after=NOW_DT - DAY
    )
    wrong_key = stranger.issue_cert("other.org").private_key_pem.bytes()
    results = files.lint(chain(leaf), wrong_key)
    assert reasons(results) == [
        (Status.FAIL, "key_mismatch"),
        (Status.FAIL, "expired"),
        (Status.FAIL, "missing_intermediate"),
        (Status.WARN, "name_mismatch"),
    ]


# --- files that can't be read ---------------------------------------------------------


def test_missing_certificate_file_fails(tmp_path: Path) -> None:
    snapshot = HomeserverSnapshot(
        server_name="example.com",
        public_baseurl=None,
        listeners=(TLS_LISTENER,),
        tls_certificate_file=str(tmp_path / "nope.pem"),
        tls_private_key_file=str(tmp_path / "nope.key"),
    )
    results = [
        r
        for r in lint_config(snapshot, LintSettings(now=NOW))
        if r.id == "config.tls_listener"
    ]
    assert reasons(results) == [(Status.FAIL, "unreadable")]
    assert "No such file" in results[0].summary


def test_tls_listener_without_certificate_path_fails() -> None:
    snapshot = HomeserverSnapshot(
        server_name="example.com", public_baseurl=None, listeners=(TLS_LISTENER,)
    )
    [result] = [
        r
        for r in lint_config(snapshot, LintSettings(now=NOW))
        if r.id == "config.tls_listener"
    ]
    assert result.status is Status.FAIL
    assert "tls_certificate_path" in result.summary


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    ],
)
def test_corrupt_certificate_file_fails(files: Files, content: bytes) -> None:
    [result] = files.lint([content], b"key")
    assert reasons([result]) == [(Status.FAIL, "not_pem")]


def test_oversized_certificate_file_fails(files: Files) -> None:
    [result] = files.lint([b"x" * (MAX_PEM_FILE_BYTES + 1)], b"key")
    assert reasons([result]) == [(Status.FAIL, "unreadable")]


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "host", "expected"),
    [
        (["example.com"], "EXAMPLE.com", True),
        (["*.example.com"], "a.example.com", True),
        (["*.example.com"], "a.b.example.com", False),
        (["*.example.com"], "example.com", False),
        (["192.0.2.1"], "192.0.2.1", True),
        (["192.0.2.1"], "192.0.2.2", False),
        (["192.0.2.1"], "example.com", False),
        ([], "example.com", False),
    ],
)
def test_covers_host(names: list[str], host: str, expected: bool) -> None:
    assert covers_host(names, host) is expected
