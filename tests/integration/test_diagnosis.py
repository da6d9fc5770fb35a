"""The named cause, against real servers on loopback: a real TLS server
serving a leaf-only chain from a CA with AIA (a real HTTP server publishes
the intermediate), from a rogue CA, and from a CA without AIA; a resolver
that answers NXDOMAIN for everything."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor, ssl
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.net.aia import MAX_ISSUER_FETCH_S
from synapse_fedhealth.report import CheckResult, Status
from tests.integration.test_engine_loopback import (
    FederationResource,
    ZoneDnsServer,
    run_engine,
)
from tests.support.aia_pki import AiaPki, Issued, issue

pytestmark = pytest.mark.integration

NAME = "aia.test"


class Published(Resource):
    """The AIA HTTP server: path -> DER body; counts requests."""

    isLeaf = True

    def __init__(self, bodies: dict[str, bytes]) -> None:
        super().__init__()
        self.bodies = bodies
        self.requests: list[str] = []

    def render_GET(self, request: Request) -> Any:
        path = request.path.decode()
        self.requests.append(path)
        if path == "/hang":
            return NOT_DONE_YET  # never answers: the run's deadline ends it
        if path == "/huge":
            return b"\x30" * (2 * 1024 * 1024)
        body = self.bodies.get(path)
        if body is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"Content-Type", b"application/pkix-cert")
        return body


class DiagnosisTest(unittest.TestCase):
    def setUp(self) -> None:
        scratch = tempfile.mkdtemp(prefix="fedhealth-diagnosis-")
        self.addCleanup(shutil.rmtree, scratch, True)
        self.threadpool = ThreadPool(minthreads=1, maxthreads=8, name="dns-test")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)
        self.published = Published({})
        listener: Any = reactor
        http = listener.listenTCP(0, Site(self.published), interface="127.0.0.1")
        self.addCleanup(http.stopListening)
        self.pki = AiaPki(f"http://127.0.0.1:{http.getHost().port}")
        self.published.bodies.update(self.pki.published())
        self.ca_file = os.path.join(scratch, "root.pem")
        with open(self.ca_file, "wb") as f:
            f.write(self.pki.root.pem)

    def serve_leaf_only(self, leaf: Issued) -> int:
        key = ssl.PrivateCertificate.loadPEM(leaf.key_pem + leaf.pem)
        listener: Any = reactor
        port = listener.listenSSL(
            0, Site(FederationResource(NAME)), key.options(), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def run_engine(
        self, server_name: str, zone: dict[tuple[str, str], Any]
    ) -> NetworkFindings:
        dns_server = ZoneDnsServer(zone)
        self.addCleanup(dns_server.stop)
        return await run_engine(server_name, dns_server, self.ca_file, self.threadpool)

    async def certificate(self, leaf: Issued) -> CheckResult:
        port = self.serve_leaf_only(leaf)
        findings = await self.run_engine(f"{NAME}:{port}", {(NAME, "A"): ["127.0.0.1"]})
        (cert,) = [c for c in findings.checks if c.id == "tls.certificate"]
        return cert

    async def test_missing_intermediate_named_from_aia(self) -> None:
        cert = await self.certificate(self.pki.leaf(NAME))
        assert cert.status is Status.FAIL
        assert cert.details["reason"] == "missing_intermediate", cert.summary
        assert "fedhealth test intermediate" in cert.details["missing_intermediate"]
        assert cert.details["aia"][0]["url"] == self.pki.intermediate_url
        assert cert.details["aia"][0]["bytes"] == len(self.pki.intermediate.der)
        assert self.published.requests == ["/int.der"]

    async def test_rogue_ca_with_aia_is_untrusted_issuer(self) -> None:
        cert = await self.certificate(self.pki.rogue_leaf(NAME))
        assert cert.details["reason"] == "untrusted_issuer", cert.summary
        assert "rogue root" in cert.summary
        assert "fullchain" not in (cert.fix or "").split(".")[0]
        assert self.published.requests == ["/rogue.der"]

    async def test_ca_without_aia_is_untrusted_issuer(self) -> None:
        cert = await self.certificate(self.pki.bare_leaf(NAME))
        assert cert.details["reason"] == "untrusted_issuer", cert.summary
        assert "private CA without AIA" in cert.summary
        assert cert.details["aia"] == []
        assert self.published.requests == []

    async def test_good_chain_fetches_nothing(self) -> None:
        leaf = self.pki.leaf(NAME)
        key = ssl.PrivateCertificate.loadPEM(leaf.key_pem + leaf.pem)
        chain = [ssl.Certificate.loadPEM(self.pki.intermediate.pem).original]
        options = ssl.CertificateOptions(
            privateKey=key.privateKey.original,
            certificate=key.original,
            extraCertChain=chain,
        )
        listener: Any = reactor
        port = listener.listenSSL(
            0, Site(FederationResource(NAME)), options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        findings = await self.run_engine(
            f"{NAME}:{port.getHost().port}", {(NAME, "A"): ["127.0.0.1"]}
        )
        (cert,) = [c for c in findings.checks if c.id == "tls.certificate"]
        assert cert.status is Status.OK, cert.summary
        assert "aia" not in cert.details
        assert self.published.requests == []

    async def test_resolver_that_sees_no_public_dns(self) -> None:
        # The resolver answers NXDOMAIN for every name, even the TLD.
        findings = await self.run_engine("matrix.example.org", {})
        (addresses,) = [c for c in findings.checks if c.id == "discovery.addresses"]
        assert addresses.details["reason"] == "host_cannot_resolve", addresses.summary
        assert "this host cannot resolve public names" in addresses.summary
        assert "dns_servers" in (addresses.fix or "")

    async def test_missing_record_in_a_zone_that_exists(self) -> None:
        findings = await self.run_engine(
            "matrix.example.org",
            {
                ("example.org", "SOA"): [
                    "ns.example.org. admin.example.org. 1 3600 600 86400 60"
                ],
                ("org", "SOA"): ["a0.org. admin.org. 1 3600 600 86400 60"],
            },
        )
        (addresses,) = [c for c in findings.checks if c.id == "discovery.addresses"]
        assert addresses.details["reason"] == "no_address", addresses.summary
        assert "Add A and/or AAAA records" in (addresses.fix or "")

    def hostile_leaf(self, path: str) -> Issued:
        return issue(
            NAME,
            self.pki.intermediate,
            ca=False,
            dns_names=(NAME,),
            aia_url=self.pki.intermediate_url.replace("/int.der", path),
        )

    async def test_huge_aia_answer_is_cut_off(self) -> None:
        cert = await self.certificate(self.hostile_leaf("/huge"))
        assert cert.status is Status.FAIL
        (fetch,) = cert.details["aia"]
        assert "larger than" in fetch["error"], fetch
        assert "could not be fetched" in cert.summary

    async def test_hanging_aia_server_ends_by_the_deadline(self) -> None:
        clock: Any = reactor
        started = clock.seconds()
        cert = await self.certificate(self.hostile_leaf("/hang"))
        # The fetch gives up after MAX_ISSUER_FETCH_S, well inside the run.
        assert clock.seconds() - started < MAX_ISSUER_FETCH_S + 1.0
        assert cert.status is Status.FAIL
        assert cert.details["reason"] == "missing_intermediate", cert.summary
        assert "timed out" in cert.details["aia"][0]["error"]
