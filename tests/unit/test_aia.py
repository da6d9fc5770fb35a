"""tls.certificate tells a missing intermediate from an untrusted CA the way
browsers do: through the leaf's AIA caIssuers URL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attr
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.checks.connection import check_certificate
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.probes import TargetProbe, TargetProber
from synapse_fedhealth.net.results import (
    ConnectOutcome,
    HandshakeOutcome,
    TlsProbeResult,
)
from synapse_fedhealth.net.tls import (
    REASON_MISSING_INTERMEDIATE,
    REASON_UNTRUSTED_ISSUER,
    IssuerFetch,
    TrustStore,
    ca_issuer_urls,
    check_chain,
    issuer_urls_to_fetch,
    parse_issuer_certificates,
)
from synapse_fedhealth.report import Status
from synapse_fedhealth.server_discovery import Target
from tests.support.aia_pki import NOW, AiaPki, Issued
from tests.unit.fakes import FakeHttp

NAME = "hs.example.test"
BASE = "http://aia.example.test"


@pytest.fixture(scope="module")
def pki() -> AiaPki:
    return AiaPki(BASE)


@pytest.fixture
def trust(pki: AiaPki, tmp_path: Path) -> TrustStore:
    ca = tmp_path / "root.pem"
    ca.write_bytes(pki.root.pem)
    return TrustStore([str(ca)])


def fetched(url: str, issued: Issued) -> IssuerFetch:
    return IssuerFetch(url=url, certificates=(issued.cert,), size=len(issued.der))


def test_aia_url_is_read(pki: AiaPki) -> None:
    assert ca_issuer_urls(pki.leaf(NAME).cert) == (pki.intermediate_url,)
    assert ca_issuer_urls(pki.bare_leaf(NAME).cert) == ()


def test_lookup_only_when_the_issuer_is_missing(pki: AiaPki, trust: TrustStore) -> None:
    leaf = pki.leaf(NAME)
    assert issuer_urls_to_fetch([leaf.cert, pki.intermediate.cert], trust) is None
    assert issuer_urls_to_fetch([leaf.cert], trust) == (pki.intermediate_url,)
    assert issuer_urls_to_fetch([pki.bare_leaf(NAME).cert], trust) == ()


def test_fetched_intermediate_that_chains_is_a_missing_intermediate(
    pki: AiaPki, trust: TrustStore
) -> None:
    checked = check_chain(
        [pki.leaf(NAME).cert],
        trust,
        issuers=[fetched(pki.intermediate_url, pki.intermediate)],
    )
    assert checked.reason == REASON_MISSING_INTERMEDIATE
    assert checked.missing_intermediate == pki.intermediate.cert
    assert "fedhealth test intermediate" in checked.message


def test_aia_that_leads_nowhere_trusted_is_an_untrusted_issuer(
    pki: AiaPki, trust: TrustStore
) -> None:
    checked = check_chain(
        [pki.rogue_leaf(NAME).cert],
        trust,
        issuers=[fetched(pki.rogue_url, pki.rogue_root)],
    )
    assert checked.reason == REASON_UNTRUSTED_ISSUER
    assert "rogue root" in checked.message
    assert "does not lead to a trusted root" in checked.message


def test_no_aia_is_an_untrusted_issuer(pki: AiaPki, trust: TrustStore) -> None:
    checked = check_chain([pki.bare_leaf(NAME).cert], trust, issuers=[])
    assert checked.reason == REASON_UNTRUSTED_ISSUER
    assert "private CA without AIA" in checked.message
    assert "no AIA URL" in checked.message


def test_unfetchable_aia_says_it_cannot_tell(pki: AiaPki, trust: TrustStore) -> None:
    checked = check_chain(
        [pki.leaf(NAME).cert],
        trust,
        issuers=[IssuerFetch(url=pki.intermediate_url, error="connection refused")],
    )
    assert checked.reason == REASON_MISSING_INTERMEDIATE
    assert "could not be fetched" in checked.message
    assert "connection refused" in checked.message


def test_without_lookup_the_old_reading_stays(pki: AiaPki, trust: TrustStore) -> None:
    # config.tls_listener reads files and never fetches: leaf alone ->
    # missing intermediate, as before.
    assert check_chain([pki.bare_leaf(NAME).cert], trust).reason == (
        REASON_MISSING_INTERMEDIATE
    )


@pytest.mark.parametrize("form", ["der", "pem", "pkcs7-der", "pkcs7-pem"])
def test_issuer_answer_forms(pki: AiaPki, form: str) -> None:
    cert = pki.intermediate.cert
    body = {
        "der": pki.intermediate.der,
        "pem": pki.intermediate.pem,
        "pkcs7-der": pkcs7.serialize_certificates([cert], Encoding.DER),
        "pkcs7-pem": pkcs7.serialize_certificates([cert], Encoding.PEM),
    }[form]
    assert parse_issuer_certificates(body) == (cert,)


@pytest.mark.parametrize("body", [b"", b"<html>404</html>", b"\x30\x82\xff\xff" * 8])
def test_hostile_issuer_answers_are_errors(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_issuer_certificates(body)


def probe_of(chain: list[Issued]) -> tuple[Target, TlsProbeResult]:
    target = Target(
        ip="203.0.113.7",
        port=8448,
        host_header=NAME,
        sni=NAME,
        hostname=NAME,
        source="test",
    )
    probe = TlsProbeResult(
        ip=target.ip,
        port=target.port,
        sni=NAME,
        connect=ConnectOutcome.OK,
        handshake=HandshakeOutcome.OK,
        protocol="TLSv1.3",
        chain=tuple(i.cert for i in chain),
    )
    return target, probe


def test_check_names_the_intermediate_and_records_the_fetch(
    pki: AiaPki, trust: TrustStore
) -> None:
    target, probe = probe_of([pki.leaf(NAME)])
    result, _ = check_certificate(
        target,
        probe,
        trust,
        warning_days=14,
        now=NOW.timestamp(),
        issuers=[fetched(pki.intermediate_url, pki.intermediate)],
    )
    assert result.status is Status.FAIL
    assert result.details["reason"] == REASON_MISSING_INTERMEDIATE
    assert "fedhealth test intermediate" in result.details["missing_intermediate"]
    assert result.details["aia"][0]["url"] == pki.intermediate_url
    assert "fedhealth test intermediate" in (result.fix or "")
    assert "fullchain.pem" in (result.fix or "")


def test_check_untrusted_issuer_fix_is_about_the_ca(
    pki: AiaPki, trust: TrustStore
) -> None:
    target, probe = probe_of([pki.bare_leaf(NAME)])
    result, _ = check_certificate(
        target, probe, trust, warning_days=14, now=NOW.timestamp(), issuers=[]
    )
    assert result.details["reason"] == REASON_UNTRUSTED_ISSUER
    assert result.details["aia"] == []
    assert "public CA" in (result.fix or "")


class ChainTls:
    """Every address hands over `chain` in a completed handshake."""

    def __init__(self, chain: tuple[Issued, ...]) -> None:
        self.chain = chain

    def probe(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> defer.Deferred[TlsProbeResult]:
        _, probe = probe_of(list(self.chain))
        return defer.succeed(attr.evolve(probe, ip=ip, port=port, sni=sni))


class FakeIssuers:
    def __init__(self, published: dict[str, Issued]) -> None:
        self.published = published
        self.fetched: list[str] = []

    def fetch(self, url: str, timeout: float) -> defer.Deferred[IssuerFetch]:
        self.fetched.append(url)
        issued = self.published.get(url)
        if issued is None:
            return defer.succeed(IssuerFetch(url=url, error="HTTP 404"))
        return defer.succeed(fetched(url, issued))


def targets(*ips: str) -> list[Target]:
    return [
        Target(ip=ip, port=8448, host_header=NAME, sni=NAME, hostname=NAME, source="t")
        for ip in ips
    ]


def probe_all(
    chain: tuple[Issued, ...], trust: TrustStore, issuers: FakeIssuers
) -> dict[str, TargetProbe]:
    reactor = MemoryReactorClock()
    prober = TargetProber(FakeHttp({}), ChainTls(chain), trust=trust, issuers=issuers)
    d = defer.ensureDeferred(
        prober.probe_targets(
            targets("203.0.113.7", "203.0.113.8"), Deadline.after(reactor, 10)
        )
    )
    found: Mapping[str, TargetProbe] = SynchronousTestCase().successResultOf(d)
    return dict(found)


def test_prober_fetches_each_aia_url_once_per_run(
    pki: AiaPki, trust: TrustStore
) -> None:
    issuers = FakeIssuers({pki.intermediate_url: pki.intermediate})
    probes = probe_all((pki.leaf(NAME),), trust, issuers)
    assert issuers.fetched == [pki.intermediate_url]
    for probe in probes.values():
        assert probe.issuers is not None
        assert probe.issuers[0].certificates == (pki.intermediate.cert,)


def test_prober_does_not_fetch_for_a_good_chain(pki: AiaPki, trust: TrustStore) -> None:
    issuers = FakeIssuers({pki.intermediate_url: pki.intermediate})
    probes = probe_all((pki.leaf(NAME), pki.intermediate), trust, issuers)
    assert issuers.fetched == []
    assert all(p.issuers is None for p in probes.values())


def test_prober_records_no_aia(pki: AiaPki, trust: TrustStore) -> None:
    issuers = FakeIssuers({})
    probes = probe_all((pki.bare_leaf(NAME),), trust, issuers)
    assert issuers.fetched == []
    assert all(p.issuers == () for p in probes.values())
