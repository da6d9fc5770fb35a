"""federation.signed_request keeps inside this server's own rc_federation:
our signed probes come from our own origin, so beyond `sleep_limit` requests
in a window Synapse would delay each by its sleep_delay, and beyond
`concurrent` it would queue them (logging each)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.checks.connection import REACHABLE
from synapse_fedhealth.checks.signed_request import SIGNED_REQUEST
from synapse_fedhealth.engine.deadline import Deadline
from synapse_fedhealth.engine.network_checker import NetworkFindings
from synapse_fedhealth.families.targets import TargetInsiderFamily
from synapse_fedhealth.homeserver import (
    HomeserverSnapshot,
    OriginRateLimit,
    _origin_rate_limit,
    snapshot_from_raw,
)
from synapse_fedhealth.net.results import HttpResult
from synapse_fedhealth.report import CheckResult, Status, ok
from synapse_fedhealth.server_discovery import Resolution, Target
from tests.unit.engine_helpers import fake_io
from tests.unit.fakes import FakeResolver, FakeTls
from tests.unit.insider_helpers import SERVER_NAME, make_key


def targets(count: int) -> tuple[Target, ...]:
    return tuple(
        Target(
            ip=f"203.0.113.{i + 1}",
            port=8448,
            host_header=SERVER_NAME,
            sni=SERVER_NAME,
            hostname=SERVER_NAME,
            source=f"A/AAAA {SERVER_NAME}, port 8448",
        )
        for i in range(count)
    )


class HeldHttp:
    """Holds every request until the test answers it, so the test sees how
    many are in flight at once."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, defer.Deferred[HttpResult]]] = []
        self.most_in_flight = 0
        self.sent = 0

    def get(self, url: str, **kw: Any) -> defer.Deferred[HttpResult]:
        d: defer.Deferred[HttpResult] = defer.Deferred()
        self.waiting.append((url, d))
        self.sent += 1
        self.most_in_flight = max(self.most_in_flight, len(self.waiting))
        return d

    def answer_all(self) -> None:
        while self.waiting:
            url, d = self.waiting.pop(0)
            # What Synapse answers a signed request for an unknown room.
            d.callback(
                HttpResult(
                    url=url,
                    host_header=SERVER_NAME,
                    sni=SERVER_NAME,
                    status=403,
                    body=b'{"errcode":"M_FORBIDDEN","error":"Host not in room."}',
                    headers={"content-type": ("application/json",)},
                )
            )


class SignedRequestRateTest(SynchronousTestCase):
    def run_family(
        self, count: int, limit: OriginRateLimit
    ) -> tuple[list[CheckResult], HeldHttp]:
        reactor = MemoryReactorClock()
        http = HeldHttp()
        io = fake_io(reactor, resolver=FakeResolver({}), http=http, tls=FakeTls({}))
        addresses = targets(count)
        network = NetworkFindings(
            resolution=Resolution(server_name=SERVER_NAME, targets=addresses),
            checks=tuple(
                ok(REACHABLE, "connected", target=t.address) for t in addresses
            ),
            federation_tester={},
            served_keys={},
            cert_expiry={},
        )
        snapshot = HomeserverSnapshot(
            server_name=SERVER_NAME,
            public_baseurl=None,
            listeners=(),
            signing_keys=(make_key(),),
            own_origin_limit=limit,
        )
        family = TargetInsiderFamily(io, snapshot, network)
        running = defer.ensureDeferred(family.run(Deadline.after(reactor, 10)))
        for _ in range(count):  # each answer lets the next one out
            http.answer_all()
        outcome = self.successResultOf(running)
        signed = [c for c in outcome.checks if c.id == SIGNED_REQUEST]
        return signed, http

    def test_sixteen_addresses_get_synapses_default_allowance(self) -> None:
        signed, http = self.run_family(16, OriginRateLimit())
        self.assertEqual(http.sent, 10)
        self.assertEqual(http.most_in_flight, 3)
        self.assertEqual(len(signed), 16)
        self.assertEqual(
            [c.status for c in signed], [Status.OK] * 10 + [Status.SKIP] * 6
        )
        not_sent = signed[10:]
        self.assertEqual(
            [c.target for c in not_sent], [t.address for t in targets(16)[10:]]
        )
        self.assertTrue(all(c.details["reason"] == "own_rate_limit" for c in not_sent))
        self.assertIn("rc_federation", not_sent[0].summary)
        self.assertIn("10 requests per 1000 ms", not_sent[0].summary)

    def test_few_addresses_all_signed_within_concurrency(self) -> None:
        signed, http = self.run_family(2, OriginRateLimit(concurrent=1))
        self.assertEqual(http.sent, 2)
        self.assertEqual(http.most_in_flight, 1)
        self.assertEqual([c.status for c in signed], [Status.OK, Status.OK])


def test_rc_federation_read_from_the_config() -> None:
    raw = {
        "server_name": SERVER_NAME,
        "rc_federation": {"sleep_limit": 25, "concurrent": 5, "window_size": 2000},
    }
    limit = snapshot_from_raw(raw, ()).own_origin_limit
    assert limit == OriginRateLimit(window_ms=2000, sleep_limit=25, concurrent=5)


def test_rc_federation_defaults_are_synapses() -> None:
    from synapse.config.ratelimiting import FederationRatelimitSettings

    synapse_default = FederationRatelimitSettings()
    ours = OriginRateLimit()
    assert (ours.window_ms, ours.sleep_limit, ours.concurrent) == (
        synapse_default.window_size,
        synapse_default.sleep_limit,
        synapse_default.concurrent,
    )
    bad = snapshot_from_raw(
        {"server_name": SERVER_NAME, "rc_federation": {"sleep_limit": "x"}}, ()
    )
    assert bad.own_origin_limit == ours
    # What a running Synapse holds (config.ratelimiting.rc_federation).
    running = _origin_rate_limit(
        FederationRatelimitSettings(window_size=500, sleep_limit=4, concurrent=2)
    )
    assert running == OriginRateLimit(window_ms=500, sleep_limit=4, concurrent=2)
