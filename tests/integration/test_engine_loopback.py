"""The network engine against real DNS and TLS, all on loopback.

A small dnspython UDP server answers for a fake `.test` zone (and SERVFAILs
or stays silent where a scenario needs it); a Twisted TLS server with a
trustme certificate plays the homeserver. Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, reactor, ssl, task
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from synapse_fedhealth.echo import NonceBook
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkChecker, NetworkFindings
from synapse_fedhealth.engine.probes import TargetConnections
from synapse_fedhealth.families.outside import ForwardedHeadersFamily
from synapse_fedhealth.families.targets import TargetInsiderFamily
from synapse_fedhealth.homeserver import HomeserverSnapshot
from synapse_fedhealth.report import CheckResult, Status
from synapse_fedhealth.runner import CheckFamily, FamilyOutcome
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.signing import canonical_json
from synapse_fedhealth.wiring import ProcessIO, RunIO
from tests.unit.insider_helpers import make_key

pytestmark = pytest.mark.integration

Zone = dict[
    tuple[str, str], Any
]  # (name, rdtype) -> list of rdata texts, "SERVFAIL" or "SILENT"


class ZoneDnsServer:
    """UDP DNS on 127.0.0.1 answering from a dict."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            question = query.question[0]
            qname = question.name.to_text().rstrip(".").lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            reply = dns.message.make_response(query)
            answer = self.zone.get((qname, rdtype))
            if answer == "SILENT":
                continue
            if answer == "SERVFAIL":
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif answer is None:
                known = any(name == qname for name, _ in self.zone)
                if not known:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                reply.answer.append(
                    dns.rrset.from_text(qname + ".", 60, "IN", rdtype, *answer)
                )
            self._sock.sendto(reply.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self._sock.close()


class FederationResource(Resource):
    isLeaf = True

    def __init__(self, server_name: str) -> None:
        super().__init__()
        self.server_name = server_name
        self.key = Ed25519PrivateKey.generate()

    def _keys(self) -> bytes:
        import base64

        public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        body: dict[str, Any] = {
            "server_name": self.server_name,
            "valid_until_ts": int((time.time() + 86400) * 1000),
            "verify_keys": {
                "ed25519:a_test": {"key": base64.b64encode(public).decode().rstrip("=")}
            },
            "old_verify_keys": {},
        }
        signature = self.key.sign(canonical_json(body))
        body["signatures"] = {
            self.server_name: {
                "ed25519:a_test": base64.b64encode(signature).decode().rstrip("=")
            }
        }
        return json.dumps(body).encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/_matrix/federation/v1/version":
            return b'{"server": {"name": "Synapse", "version": "1.163.2"}}'
        if request.path == b"/_matrix/key/v2/server":
            return self._keys()
        request.setResponseCode(404)
        return b'{"errcode": "M_UNRECOGNIZED"}'


class CountingSite(Site):
    """A Site that notes the address of each connection it accepts."""

    def __init__(
        self, resource: Resource, accepted: list[str], ip: str, live: set[Any]
    ) -> None:
        super().__init__(resource)
        self.accepted = accepted
        self.ip = ip
        self.live = live  # the connections open now

    def buildProtocol(self, addr: Any) -> Any:
        self.accepted.append(self.ip)
        protocol = super().buildProtocol(addr)
        self.live.add(protocol)
        lost = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            self.live.discard(protocol)
            lost(reason)

        protocol.connectionLost = connection_lost
        return protocol


async def run_engine(
    server_name: str,
    dns_server: ZoneDnsServer,
    ca_file: str,
    threadpool: ThreadPool,
    timeout: float = 4.0,
    follow_ups: Callable[[RunIO, NetworkFindings], Awaitable[None]] | None = None,
) -> NetworkFindings:
    """One real network check of `server_name`, resolving through
    `dns_server`, trusting `ca_file`; then `follow_ups`, on the same run's
    I/O."""
    settings = RunSettings(
        server_name=server_name,
        timeout_s=timeout,
        cert_expiry_warning_days=14,
        ca_files=(ca_file,),
        dns_servers=(dns_server.address,),
        user_agent="Synapse/test",
    )
    io = ProcessIO(reactor, threadpool=threadpool).for_run(settings)
    try:
        findings = await NetworkChecker(io, settings).check(
            Deadline.after(reactor, settings.timeout_s)
        )
        if follow_ups is not None:
            await follow_ups(io, findings)
        return findings
    finally:
        # As the runner does when a run ends.
        if io.targets is not None:
            io.targets.close_all()


async def _run_family(family: CheckFamily, deadline: Deadline) -> FamilyOutcome:
    return await family.run(deadline)


class EngineLoopbackTest(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = trustme.CA()
        # Not trial's mktemp(): that writes into the current directory.
        scratch = tempfile.mkdtemp(prefix="fedhealth-engine-")
        self.addCleanup(shutil.rmtree, scratch, True)
        self.ca_file = os.path.join(scratch, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.threadpool = ThreadPool(minthreads=1, maxthreads=8, name="dns-test")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)
        self.live: set[Any] = set()  # server side: connections open now

    def serve_tls(self, server_name: str, cert_names: list[str]) -> int:
        leaf = self.ca.issue_cert(*cert_names)
        key = ssl.PrivateCertificate.loadPEM(
            leaf.private_key_and_cert_chain_pem.bytes()
        )
        site = Site(FederationResource(server_name))
        listener: Any = reactor
        port = listener.listenSSL(0, site, key.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def serve_counting_connections(
        self, server_name: str, cert_names: list[str], ips: list[str]
    ) -> tuple[int, list[str]]:
        """`serve_tls` on each of `ips` (one port), as `server_name:PORT`;
        the list fills with the address of each connection accepted."""
        leaf = self.ca.issue_cert(*cert_names)
        key = ssl.PrivateCertificate.loadPEM(
            leaf.private_key_and_cert_chain_pem.bytes()
        )
        accepted: list[str] = []
        resource = FederationResource(server_name)
        listener: Any = reactor
        port = 0
        for ip in ips:
            site = CountingSite(resource, accepted, ip, self.live)
            listening = listener.listenSSL(port, site, key.options(), interface=ip)
            self.addCleanup(listening.stopListening)
            port = int(listening.getHost().port)
        resource.server_name = f"{server_name}:{port}"
        return port, accepted

    def dns(self, zone: Zone) -> ZoneDnsServer:
        server = ZoneDnsServer(zone)
        self.addCleanup(server.stop)
        return server

    async def run_engine(
        self,
        server_name: str,
        dns_server: ZoneDnsServer,
        timeout: float = 4.0,
        follow_ups: Callable[[RunIO, NetworkFindings], Awaitable[None]] | None = None,
    ) -> NetworkFindings:
        return await run_engine(
            server_name, dns_server, self.ca_file, self.threadpool, timeout, follow_ups
        )

    @staticmethod
    def by_id(findings: NetworkFindings) -> Callable[[str], list[Any]]:
        return lambda check_id: [c for c in findings.checks if c.id == check_id]

    async def test_srv_delegation_all_good(self) -> None:
        port = self.serve_tls("srv.test", ["srv.test"])
        server = self.dns(
            {
                ("_matrix-fed._tcp.srv.test", "SRV"): [f"10 5 {port} host.test."],
                ("srv.test", "A"): [
                    "127.0.0.2"
                ],  # nothing on 127.0.0.2:443: no well-known
                ("host.test", "A"): ["127.0.0.1"],
            }
        )
        findings = await self.run_engine("srv.test", server)
        get = self.by_id(findings)
        statuses = {c.id: c.status for c in findings.checks}
        assert get("discovery.well_known")[0].status is Status.OK, get(
            "discovery.well_known"
        )
        assert statuses["discovery.srv"] is Status.OK
        # 127.0.0.1 is loopback: peers with the default blacklist refuse it.
        assert statuses["discovery.addresses"] is Status.WARN
        for check_id in (
            "connection.reachable",
            "tls.handshake",
            "tls.certificate",
            "federation.version",
            "federation.keys",
        ):
            assert get(check_id)[0].status is Status.OK, get(check_id)
            assert get(check_id)[0].target == f"127.0.0.1:{port}"
        assert findings.targets[0].host_header == "srv.test"
        assert f"127.0.0.1:{port}" in findings.served_keys
        assert "srv.test" in findings.cert_expiry
        tester = findings.federation_tester
        assert (
            tester["ConnectionReports"][f"127.0.0.1:{port}"]["Checks"]["AllChecksOK"]
            is True
        )
        assert tester["Version"] == {"name": "Synapse", "version": "1.163.2"}

    async def test_name_mismatch_and_explicit_port(self) -> None:
        port = self.serve_tls("wrong.test", ["other.test"])
        server = self.dns({("wrong.test", "A"): ["127.0.0.1"]})
        findings = await self.run_engine(f"wrong.test:{port}", server)
        cert = self.by_id(findings)("tls.certificate")[0]
        assert cert.status is Status.FAIL
        assert cert.details["reason"] == "name_mismatch"
        # The key answer names wrong.test, not wrong.test:PORT.
        assert self.by_id(findings)("federation.keys")[0].status is Status.FAIL
        assert self.by_id(findings)("discovery.srv")[0].status is Status.OK

    async def test_srv_servfail_stops_resolution(self) -> None:
        server = self.dns(
            {
                ("_matrix-fed._tcp.broken.test", "SRV"): "SERVFAIL",
                ("broken.test", "A"): ["127.0.0.2"],
            }
        )
        findings = await self.run_engine("broken.test", server)
        srv = self.by_id(findings)("discovery.srv")[0]
        assert srv.status is Status.FAIL
        assert srv.details["reason"] == "servfail"
        assert findings.targets == ()

    async def test_silent_dns_finishes_in_time(self) -> None:
        server = self.dns(
            {
                ("_matrix-fed._tcp.slow.test", "SRV"): "SILENT",
                ("_matrix._tcp.slow.test", "SRV"): "SILENT",
                ("slow.test", "A"): "SILENT",
                ("slow.test", "AAAA"): "SILENT",
            }
        )
        started = time.monotonic()
        findings = await self.run_engine("slow.test", server, timeout=1.5)
        assert time.monotonic() - started < 2.0
        reasons = {c.id: c.details.get("reason") for c in findings.checks}
        assert reasons["discovery.srv"] == "timeout"
        assert reasons["discovery.well_known"] == "timeout"

    async def test_one_connection_per_target(self) -> None:
        """The TLS probe, the version and the keys of a target share one
        connection, and every target is probed; the signed request and the
        echo through the federation path, sent at once to the first target,
        ride its connection too. When the run ends, none is left open."""
        ips = ["127.0.0.1", "127.0.0.3", "127.0.0.4"]
        port, accepted = self.serve_counting_connections(
            "pooled.test", ["pooled.test"], ips
        )
        server = self.dns({("pooled.test", "A"): ips})
        later: list[CheckResult] = []
        kept: list[TargetConnections] = []

        async def follow_ups(io: RunIO, findings: NetworkFindings) -> None:
            assert io.targets is not None
            kept.append(io.targets)
            snapshot = HomeserverSnapshot(
                server_name=findings.resolution.server_name,
                public_baseurl=None,
                listeners=(),
                signing_keys=(make_key(),),
            )
            families: list[CheckFamily] = [
                TargetInsiderFamily(io, snapshot, findings),
                ForwardedHeadersFamily(
                    io,
                    public_baseurl=None,
                    echo=NonceBook(secret=b"s" * 32),
                    network=findings,
                ),
            ]
            deadline = Deadline.after(reactor, 4.0)
            outcomes = await defer.gatherResults(
                [defer.ensureDeferred(_run_family(f, deadline)) for f in families],
                consumeErrors=True,
            )
            later.extend(c for o in outcomes for c in o.checks)

        findings = await self.run_engine(
            f"pooled.test:{port}", server, follow_ups=follow_ups
        )
        get = self.by_id(findings)
        for check_id in ("tls.handshake", "federation.version", "federation.keys"):
            results = get(check_id)
            assert len(results) == len(ips), results
            assert all(r.status is Status.OK for r in results), results
        # This server answers 404 to both; what matters is that they were
        # answered, over the connections the probes made.
        signed = [c for c in later if c.id == "federation.signed_request"]
        echo = [c for c in later if c.id == "proxy.forwarded_headers"]
        assert len(signed) == len(ips) and echo, later
        for result in signed + echo:
            answered = result.summary + json.dumps(result.details)
            assert "404" in answered and "timed out" not in answered, result
        assert sorted(accepted) == sorted(ips), accepted
        # Every connection of the run was dropped when it ended.
        await task.deferLater(reactor, 0.05, lambda: None)
        assert not self.live, self.live
