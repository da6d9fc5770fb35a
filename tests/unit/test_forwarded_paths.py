"""proxy.forwarded_headers through the client path and the federation path
peers use: judged on whichever reaches this Synapse; a skip only when none
does, naming every path tried."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.checks.forwarded import EchoRecord
from synapse_fedhealth.echo import NonceBook
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.families.outside import ForwardedHeadersFamily
from synapse_fedhealth.homeserver import ListenerInfo
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import CheckResult, Status
from synapse_fedhealth.server_discovery import Resolution, Target
from tests.unit.engine_helpers import fake_io
from tests.unit.fakes import FakeResolver, FakeTls

FED_IP = "203.0.113.7"
TARGET = Target(
    ip=FED_IP,
    port=8448,
    host_header="example.com",
    sni="example.com",
    hostname="example.com",
    source="A/AAAA example.com, port 8448",
)
LISTENER = ListenerInfo(
    index=0,
    port=8008,
    bind_addresses=("127.0.0.1",),
    type="http",
    tls=False,
    x_forwarded=True,
    resources=frozenset({"client", "federation"}),
)


class EchoHttp:
    """Answers echo requests by the address they are sent to: as Synapse
    behind a proxy that forwards nothing (`routed`), or a 404."""

    def __init__(
        self, nonces: NonceBook, routed: set[str], ports: dict[str, int] | None = None
    ) -> None:
        self.nonces = nonces
        self.routed = routed
        self.ports = ports or {}  # where -> the listener port that answers
        self.requests: list[tuple[str, Any]] = []

    def get(self, url: str, **kw: Any) -> defer.Deferred[HttpResult]:
        connect_to = kw.get("connect_to")
        self.requests.append((url, connect_to))
        where = connect_to[0] if connect_to else "client"
        base = HttpResult(url=url, host_header=kw.get("host_header") or "", sni="")
        if where not in self.routed:
            return defer.succeed(
                HttpResult(
                    url=url,
                    host_header=base.host_header,
                    sni="",
                    status=404,
                    body=b"<html><center>nginx</center></html>",
                    headers={"content-type": ("text/html",)},
                )
            )
        nonce = url.rsplit("/", 1)[1]
        record = EchoRecord(
            host="example.com",
            peer="127.0.0.1",
            listener_port=self.ports.get(where, 8008),
            listener_x_forwarded=True,
        )
        body, mac = self.nonces.sign_answer(nonce, record.to_json())
        return defer.succeed(
            HttpResult(
                url=url,
                host_header=base.host_header,
                sni="",
                status=200,
                body=body,
                headers={
                    "content-type": ("application/json",),
                    "x-fedhealth-echo-mac": (mac,),
                },
            )
        )


def network(*targets: Target) -> NetworkFindings:
    return NetworkFindings(
        resolution=Resolution(server_name="example.com", targets=targets),
        checks=(),
        federation_tester={},
        served_keys={},
        cert_expiry={},
    )


class ForwardedPathsTest(SynchronousTestCase):
    def run_family(
        self,
        *,
        public_baseurl: str | None,
        routed: set[str],
        ports: dict[str, int] | None = None,
    ) -> tuple[list[CheckResult], EchoHttp]:
        reactor = MemoryReactorClock()
        nonces = NonceBook(secret=b"s" * 32)
        http = EchoHttp(nonces, routed, ports)
        io = fake_io(reactor, resolver=FakeResolver({}), http=http, tls=FakeTls({}))
        family = ForwardedHeadersFamily(
            io,
            public_baseurl=public_baseurl,
            listeners=(LISTENER,),
            echo=nonces,
            network=network(TARGET),
        )
        outcome = self.successResultOf(
            defer.ensureDeferred(family.run(Deadline.after(reactor, 10)))
        )
        return list(outcome.checks), http

    def test_federation_path_judged_without_public_baseurl(self) -> None:
        checks, http = self.run_family(public_baseurl=None, routed={FED_IP})
        (result,) = checks
        assert result.status is Status.WARN
        assert "X-Forwarded-For did not arrive" in result.summary
        assert result.target == f"{FED_IP}:8448"
        assert result.details["path"] == "federation"
        assert http.requests[0][1] == (FED_IP, 8448)

    def test_both_paths_to_the_same_listener_give_one_result(self) -> None:
        checks, _ = self.run_family(
            public_baseurl="https://example.com/", routed={FED_IP, "client"}
        )
        (result,) = checks
        assert result.details["path"] == "client"
        assert [p["path"] for p in result.details["paths_tried"]] == [
            "client",
            "federation",
        ]

    def test_paths_to_different_listeners_give_a_result_each(self) -> None:
        checks, _ = self.run_family(
            public_baseurl="https://example.com/",
            routed={FED_IP, "client"},
            ports={FED_IP: 8009},
        )
        assert [c.details["path"] for c in checks] == ["client", "federation"]
        assert checks[1].details["received"]["listener"]["port"] == 8009

    def test_only_one_path_routed_is_judged_not_skipped(self) -> None:
        checks, _ = self.run_family(
            public_baseurl="https://matrix.example.com/", routed={FED_IP}
        )
        (result,) = checks
        assert result.status is Status.WARN
        assert [p["path"] for p in result.details["paths_tried"]] == [
            "client",
            "federation",
        ]

    def test_skip_names_every_path_tried(self) -> None:
        checks, _ = self.run_family(
            public_baseurl="https://matrix.example.com/", routed=set()
        )
        (result,) = checks
        assert result.status is Status.SKIP
        assert "the public client path https://matrix.example.com/" in result.summary
        assert f"the federation path peers use ({FED_IP}:8448" in result.summary
        assert result.details["reason"] == "not_routed"
