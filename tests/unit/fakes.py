"""Fakes of the engine's DNS, HTTP and TLS interfaces for unit tests, driven
by dictionaries of answers, with logs of what was asked."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from synapse_fedhealth.net.results import (
    ConnectOutcome,
    DnsOutcome,
    DnsResult,
    HandshakeOutcome,
    HttpResult,
    ProbeError,
    TlsProbeResult,
)
from synapse_fedhealth.report import CheckResult, Report

# Answer markers: HANG never answers (the caller's deadline has to end it);
# BOOM fails the way a bug in the real implementation would.
HANG = "hang"
BOOM = "boom"

# What a healthy /_matrix/federation/v1/version answers, for FakeHttp.
VERSION = (200, {"server": {"name": "Synapse", "version": "1.163.2"}})


class FakeResolver:
    """Answers by (qname, rdtype) from `records`; a question not there gets
    `default`.

    A value is a list of addresses (A, AAAA) or of `SrvRecord`s (SRV), a
    `DnsOutcome`, None (NXDOMAIN), HANG or BOOM. Every question is logged in
    `queries`; the Deferred of each HANG is kept in `pending` with its
    question, so a test can answer it later.
    """

    def __init__(
        self,
        records: dict[tuple[str, str], Any] | None = None,
        *,
        default: Any = None,
    ) -> None:
        self.records = {} if records is None else records
        self.default = default
        self.queries: list[tuple[str, str]] = []
        self.pending: list[tuple[str, str, defer.Deferred[DnsResult]]] = []

    def lookup(
        self, qname: str, rdtype: str, timeout: float
    ) -> defer.Deferred[DnsResult]:
        self.queries.append((qname, rdtype))
        value = self.records.get((qname, rdtype), self.default)
        if value == HANG:
            d: defer.Deferred[DnsResult] = defer.Deferred()
            self.pending.append((qname, rdtype, d))
            return d
        if value == BOOM:
            return defer.fail(RuntimeError("resolver bug"))
        if isinstance(value, DnsOutcome):
            return defer.succeed(DnsResult(qname=qname, rdtype=rdtype, outcome=value))
        if value is None:
            return defer.succeed(
                DnsResult(qname=qname, rdtype=rdtype, outcome=DnsOutcome.NXDOMAIN)
            )
        if rdtype == "SRV":
            return defer.succeed(
                DnsResult(
                    qname=qname,
                    rdtype=rdtype,
                    outcome=DnsOutcome.ANSWER,
                    srv=tuple(value),
                )
            )
        return defer.succeed(
            DnsResult(
                qname=qname,
                rdtype=rdtype,
                outcome=DnsOutcome.ANSWER,
                addresses=tuple(value),
            )
        )


class FakeHttp:
    """Answers by (path, connect_to ip); HANG never answers."""

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, Any, str | None]] = []

    def get(
        self,
        url: str,
        *,
        connect_to: tuple[str, int] | None = None,
        host_header: str | None = None,
        sni: str | None = None,
        timeout: float,
        **kw: Any,
    ) -> defer.Deferred[HttpResult]:
        self.requests.append((url, connect_to, host_header))
        path = "/" + url.split("/", 3)[3]
        ip = connect_to[0] if connect_to else ""
        value = self.answers.get((path, ip), self.answers.get((path, "*")))
        if value == HANG:
            return defer.Deferred()
        if value == BOOM:
            raise RuntimeError("http bug")
        base = HttpResult(url=url, host_header=host_header or "", sni=sni or "")
        if value is None:
            return defer.succeed(
                HttpResult(
                    url=url,
                    host_header=host_header or "",
                    sni=sni or "",
                    error=ProbeError.REFUSED,
                    error_message="connection refused",
                )
            )
        status, body = value
        return defer.succeed(
            HttpResult(
                url=base.url,
                host_header=base.host_header,
                sni=base.sni,
                status=status,
                body=json.dumps(body).encode() if not isinstance(body, bytes) else body,
                headers={"content-type": ("application/json",)},
            )
        )


class FakeTls:
    def __init__(self, outcomes: dict[str, Any]) -> None:
        self.outcomes = outcomes
        self.probed: list[str] = []

    def probe(
        self, ip: str, port: int, sni: str, timeout: float
    ) -> defer.Deferred[TlsProbeResult]:
        self.probed.append(ip)
        value = self.outcomes.get(ip, ConnectOutcome.REFUSED)
        if value == HANG:
            return defer.Deferred()
        if value == "ok":
            return defer.succeed(
                TlsProbeResult(
                    ip=ip,
                    port=port,
                    sni=sni,
                    connect=ConnectOutcome.OK,
                    handshake=HandshakeOutcome.OK,
                    protocol="TLSv1.3",
                    cipher="X",
                )
            )
        return defer.succeed(
            TlsProbeResult(
                ip=ip, port=port, sni=sni, connect=value, connect_error=str(value)
            )
        )


class FakeTargetConnection:
    """A target's kept connection over `FakeTls` and `FakeHttp`: its
    handshake is the TLS probe (`tls.probed`); its requests are answered by
    `http` (and listed in `http.requests`) and noted in `ridden`: they ride
    the kept connection, with no handshake of their own."""

    def __init__(
        self, http: FakeHttp, tls: FakeTls, target: Any, ridden: list[str]
    ) -> None:
        self._http = http
        self._tls = tls
        self._target = target
        self._ridden = ridden
        self.closed = False

    def handshake(self, timeout: float) -> defer.Deferred[TlsProbeResult]:
        t = self._target
        return self._tls.probe(t.ip, t.port, t.sni, timeout)

    def get(
        self, url: str, *, host_header: str, timeout: float, **kw: Any
    ) -> defer.Deferred[HttpResult]:
        self._ridden.append(url)
        t = self._target
        kw.pop("wait_for_connection_s", None)
        return self._http.get(
            url,
            connect_to=(t.ip, t.port),
            host_header=host_header,
            sni=t.sni,
            timeout=timeout,
            **kw,
        )

    def close(self) -> None:
        self.closed = True


def report_of(
    *checks: CheckResult, notes: tuple[str, ...] = (), server_name: str = "example.com"
) -> Report:
    """A report of these checks, generated at 2025-11-28 00:00:00 UTC."""
    return Report.build(
        server_name=server_name,
        checks=list(checks),
        federation_disabled=False,
        generated_at=1764288000000,
        duration_ms=12,
        notes=notes,
    )
