"""Fetching a certificate's issuer from its AIA caIssuers URL.

CAs publish their intermediates over plain HTTP (RFC 5280 4.2.2.1: the
answer is a DER certificate or a PKCS#7 bundle; some serve PEM), which the
HTTPS probe client refuses by design, so this is its own small client:
addresses from our resolver and never a forbidden one, no redirects, a size
cap and a time cap, and every failure an `IssuerFetch.error`, never an
exception.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from synapse_fedhealth.net.addresses import (
    AddressClass,
    classify_address,
    is_ip_literal,
)
from synapse_fedhealth.net.dns import DnsResolver
from synapse_fedhealth.net.http import (
    _Discard,
    _FixedEndpointFactory,
    classify_failure,
    read_body,
)
from synapse_fedhealth.net.tls import (
    MAX_ISSUER_BYTES,
    IssuerFetch,
    parse_issuer_certificates,
)

AIA_DEFAULT_PORT = 80
# CAs serve these from CDNs in milliseconds; a slow one must not hold the
# target's probes for the whole run.
MAX_ISSUER_FETCH_S = 2.0


class IssuerFetcher(Protocol):
    def fetch(self, url: str, timeout: float) -> defer.Deferred[IssuerFetch]:
        """GET an AIA caIssuers `url` within `timeout` seconds. Never fails."""


class _NoIssuer(Exception):
    pass


class PlainHttpIssuerFetcher:
    """The production `IssuerFetcher`, on the reactor and our resolver."""

    def __init__(self, reactor: Any, resolver: DnsResolver, *, user_agent: str) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._user_agent = user_agent

    def fetch(self, url: str, timeout: float) -> defer.Deferred[IssuerFetch]:
        timeout = min(timeout, MAX_ISSUER_FETCH_S)
        deadline = self._reactor.seconds() + timeout
        fetching = defer.Deferred.fromCoroutine(self._fetch(url, deadline))
        fetching.addTimeout(max(0.0, timeout), self._reactor)

        def _failed(f: Failure) -> IssuerFetch:
            if isinstance(f.value, _NoIssuer):
                return IssuerFetch(url=url, error=str(f.value))
            kind, message, _ = classify_failure(f.value or Exception("unknown"))
            if kind.value == "timeout":
                message = f"timed out after {timeout:.1f}s"
            return IssuerFetch(url=url, error=message)

        fetching.addErrback(_failed)
        return fetching

    async def _fetch(self, url: str, deadline: float) -> IssuerFetch:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() != "http":
            raise _NoIssuer("only http:// AIA URLs are fetched")
        host = parsed.hostname or ""
        ip = await self._address(host, deadline)
        port = parsed.port or AIA_DEFAULT_PORT
        cls = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        endpoint: Any = cls(self._reactor, ip, port)
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        agent = Agent.usingEndpointFactory(
            self._reactor, _FixedEndpointFactory(endpoint), pool=pool
        )
        headers = Headers(
            {
                b"User-Agent": [self._user_agent.encode("latin-1", "replace")],
                b"Host": [parsed.netloc.encode("ascii", "replace")],
            }
        )
        try:
            request_uri = url.encode("ascii")
        except UnicodeEncodeError:
            raise _NoIssuer("not an ASCII URL") from None
        response = await agent.request(b"GET", request_uri, headers)
        if response.code != 200:
            response.deliverBody(_Discard())
            raise _NoIssuer(f"HTTP {response.code}")
        body = await read_body(response, MAX_ISSUER_BYTES)
        try:
            certificates = parse_issuer_certificates(body)
        except ValueError as e:
            return IssuerFetch(url=url, size=len(body), error=str(e))
        return IssuerFetch(url=url, certificates=certificates, size=len(body))

    async def _address(self, host: str, deadline: float) -> str:
        bare = host.strip("[]")
        if is_ip_literal(bare):
            candidates = [bare]
        else:
            remaining = max(0.0, deadline - self._reactor.seconds())
            results = await defer.gatherResults(
                [self._resolver.lookup(host, t, remaining) for t in ("A", "AAAA")],
                consumeErrors=True,
            )
            candidates = [a for r in results for a in r.addresses]
            if not candidates:
                raise _NoIssuer(f"{host} has no address")
        for address in candidates:
            if classify_address(address) is not AddressClass.FORBIDDEN:
                return address
        raise _NoIssuer(f"{host} resolves only to addresses we never connect to")
