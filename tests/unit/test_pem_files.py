"""The parsed-file cache: a file is parsed again only when its stat changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from synapse_fedhealth import pem_files
from synapse_fedhealth.checks.config_lint import LintSettings, lint_config
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.net.tls import TrustStore, check_chain, verify_chain
from synapse_fedhealth.pem_files import PemFileCache, PemFileError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def overwrite_keeping_stat(path: Path, content: bytes) -> None:
    """New content of the same size, in place (same inode), same mtime."""
    before = path.stat()
    assert len(content) == before.st_size
    with open(path, "r+b") as f:
        f.write(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, ca: trustme.CA) -> None:
    cache = PemFileCache()
    path = tmp_path / "chain.pem"
    pem = ca.issue_cert("example.com").cert_chain_pems[0].bytes()
    path.write_bytes(pem)
    first = cache.certificate_chain(str(path))
    overwrite_keeping_stat(path, b"x" * len(pem))
    assert cache.certificate_chain(str(path)) is first
    assert cache.reads == 1


def test_a_changed_mtime_reads_again(tmp_path: Path, ca: trustme.CA) -> None:
    cache = PemFileCache()
    path = tmp_path / "chain.pem"
    pem = ca.issue_cert("example.com").cert_chain_pems[0].bytes()
    path.write_bytes(pem)
    cache.certificate_chain(str(path))
    overwrite_keeping_stat(path, b"x" * len(pem))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    with pytest.raises(PemFileError) as raised:
        cache.certificate_chain(str(path))
    assert raised.value.kind == pem_files.NOT_PEM
    # The failure is remembered too, until the file changes again.
    with pytest.raises(PemFileError):
        cache.certificate_chain(str(path))
    assert cache.reads == 2


def test_the_key_match_is_parsed_once(tmp_path: Path, ca: trustme.CA) -> None:
    cache = PemFileCache()
    leaf = ca.issue_cert("example.com")
    other = ca.issue_cert("example.com")
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(leaf.private_key_pem.bytes())
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    other_cert = x509.load_pem_x509_certificate(other.cert_chain_pems[0].bytes())
    assert cache.key_matches_certificate(str(key_path), cert)
    assert cache.key_matches_certificate(str(key_path), cert)
    assert not cache.key_matches_certificate(str(key_path), other_cert)
    assert cache.reads == 1


def test_a_missing_file_is_an_oserror_each_time(tmp_path: Path) -> None:
    cache = PemFileCache()
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            cache.certificate_chain(str(tmp_path / "nope.pem"))


def test_oversized_files_are_not_parsed(tmp_path: Path) -> None:
    cache = PemFileCache()
    path = tmp_path / "big.pem"
    path.write_bytes(b"x" * (pem_files.MAX_PEM_FILE_BYTES + 1))
    with pytest.raises(PemFileError) as raised:
        cache.certificate_chain(str(path))
    assert raised.value.kind == pem_files.TOO_LARGE


def test_a_bad_root_does_not_hide_the_others(tmp_path: Path, ca: trustme.CA) -> None:
    bad = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    path = tmp_path / "bundle.pem"
    path.write_bytes(bad + ca.cert_pem.bytes())
    bundle = PemFileCache().ca_bundle(str(path))
    assert len(bundle.certificates) == 1


def test_trust_stores_over_unchanged_files_share_one_openssl_store(
    tmp_path: Path, ca: trustme.CA
) -> None:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    assert TrustStore([str(path)]).store is TrustStore([str(path)]).store
    assert TrustStore().store is TrustStore().store


def test_unusable_ca_files_raise_unless_skipped(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(OSError):
        TrustStore([missing])
    with pytest.raises(ValueError, match="no PEM certificate"):
        TrustStore([str(empty)])
    # Skipping: the missing file is left out; the empty one was read and
    # simply trusts nothing.
    assert TrustStore([missing, str(empty)], skip_unreadable=True).files == (
        str(empty),
    )


def test_dates_are_judged_at_now_not_by_the_clock(
    tmp_path: Path, ca: trustme.CA
) -> None:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    trust = TrustStore([str(path)])
    leaf = ca.issue_cert("example.com")
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in leaf.cert_chain_pems]
    now = chain[0].not_valid_after_utc.timestamp()
    assert check_chain(chain, trust).reason is None
    assert verify_chain(chain, "example.com", trust, now=now - 1).valid
    assert verify_chain(chain, "example.com", trust, now=now + 1).reason == "expired"


def test_a_second_lint_parses_no_file(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("example.com")
    cert_path = tmp_path / "fullchain.pem"
    key_path = tmp_path / "key.pem"
    ca_path = tmp_path / "ca.pem"
    cert_path.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key_path.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    snapshot = HomeserverSnapshot(
        server_name="example.com",
        public_baseurl="https://example.com/",
        listeners=(
            ListenerInfo(
                index=0,
                type="http",
                port=8448,
                tls=True,
                resources=frozenset({"federation"}),
            ),
        ),
        tls_certificate_file=str(cert_path),
        tls_private_key_file=str(key_path),
    )
    settings = LintSettings(now=leaf_not_before(leaf) + 86400, tls_ca_file=str(ca_path))
    first = lint_config(snapshot, settings)
    reads = pem_files.FILES.reads
    assert lint_config(snapshot, settings) == first
    assert pem_files.FILES.reads == reads
    [tls_result] = [r for r in first if r.id == "config.tls_listener"]
    assert tls_result.details["trust_store"] == str(ca_path)


def leaf_not_before(leaf: trustme.LeafCert) -> float:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return cert.not_valid_before_utc.timestamp()
