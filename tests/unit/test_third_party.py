"""Third parties are asked at most once a minute (SPEC 2.2): the cache on a
fake clock, and notaries across `?refresh=true` runs while our own server is
probed afresh every run."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from synapse_fedhealth.config import parse_fedhealth_config
from synapse_fedhealth.echo import NonceBook
from synapse_fedhealth.families import DefaultFamilies
from synapse_fedhealth.homeserver import HomeserverSnapshot, ListenerInfo
from synapse_fedhealth.report import Report
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.settings import RunSettings
from synapse_fedhealth.third_party import ThirdPartyAnswers
from tests.unit.engine_helpers import WALL_CLOCK_START, fake_io
from tests.unit.fakes import VERSION, FakeResolver, FakeTls
from tests.unit.insider_helpers import key_response, notary_info
from tests.unit.test_request_budget import (
    KEY,
    NOTARY_IP,
    NOTARY_KEY,
    SERVER,
    SERVER_IP,
    SynapseLikeHttp,
)


def _answer_now(answers: ThirdPartyAnswers, key: Any, value: str) -> Any:
    asked: list[str] = []

    async def question() -> str:
        asked.append(value)
        return value

    out: list[Any] = []
    defer.ensureDeferred(answers.ask(key, question)).addCallback(out.append)
    return out[0], asked


def test_asked_once_a_minute_per_question() -> None:
    clock = Clock()
    answers = ThirdPartyAnswers(clock)
    first, asked = _answer_now(answers, ("n", "q1"), "a")
    assert (first.value, first.reused, first.age_ms, asked) == ("a", False, 0, ["a"])
    clock.advance(59.5)
    again, asked = _answer_now(answers, ("n", "q1"), "b")
    assert (again.value, again.reused, again.age_ms, asked) == ("a", True, 59_500, [])
    other, asked = _answer_now(answers, ("n", "q2"), "c")
    assert (other.value, asked) == ("c", ["c"]), "another question is asked"
    clock.advance(0.5)
    later, asked = _answer_now(answers, ("n", "q1"), "d")
    assert (later.value, later.reused, asked) == ("d", False, ["d"])


def test_a_failed_question_is_not_remembered() -> None:
    answers = ThirdPartyAnswers(Clock())

    async def broken() -> str:
        raise ValueError("no")

    failures: list[Any] = []
    defer.ensureDeferred(answers.ask("k", broken)).addErrback(failures.append)
    assert failures and answers.last("k") is None


def test_the_cache_is_bounded() -> None:
    answers = ThirdPartyAnswers(Clock(), max_remembered=3)
    for i in range(10):
        _answer_now(answers, i, str(i))
    assert [answers.last(i) is not None for i in range(10)] == [False] * 7 + [True] * 3


def _service(clock: Clock, http: SynapseLikeHttp) -> FedHealthService:
    snapshot = HomeserverSnapshot(
        server_name=SERVER,
        public_baseurl=f"https://{SERVER}/",
        listeners=(
            ListenerInfo(
                index=0,
                type="http",
                port=8008,
                bind_addresses=("127.0.0.1",),
                resources=frozenset({"client", "federation"}),
                x_forwarded=True,
            ),
        ),
        signing_keys=(KEY,),
        trusted_key_servers=(notary_info(NOTARY_KEY),),
    )
    tls = FakeTls({SERVER_IP: "ok", NOTARY_IP: "ok"})
    dns = FakeResolver(
        {(SERVER, "A"): [SERVER_IP], ("notary.example.org", "A"): [NOTARY_IP]}
    )

    def run_io(settings: RunSettings) -> Any:
        return fake_io(clock, resolver=dns, http=http, tls=tls)

    return FedHealthService(
        config=parse_fedhealth_config({"timeout": "5s"}),
        server_name=SERVER,
        snapshot=snapshot,
        clock=clock,
        run_io=run_io,
        families=DefaultFamilies(
            snapshot,
            echo=NonceBook(secret=b"s" * 32),
            third_parties=ThirdPartyAnswers(clock),
        ),
        runs_network=True,
        user_agent="Synapse/test",
    )


def _refresh(service: FedHealthService, clock: Clock) -> Report:
    d = service.get_report(refresh=True)
    clock.advance(0)
    out: list[Report] = []
    d.addCallback(out.append)
    assert out, "the run finishes at once with fakes"
    return out[0]


def test_refreshes_ask_the_notary_once_a_minute_and_probe_us_every_run() -> None:
    clock = Clock()
    keys = key_response(
        SERVER, KEY, valid_until_ts=int(WALL_CLOCK_START * 1000) + 86_400_000
    )
    http = SynapseLikeHttp(
        {
            ("/.well-known/matrix/server", "*"): (404, b""),
            ("/_matrix/federation/v1/version", SERVER_IP): VERSION,
            ("/_matrix/key/v2/server", SERVER_IP): (200, keys),
            ("/_matrix/key/v2/query", NOTARY_IP): (200, {"server_keys": []}),
        }
    )
    service = _service(clock, http)

    def count(path: str) -> int:
        return sum(1 for url, _, _ in http.requests if path in url)

    ages = []
    for _ in range(5):
        report = _refresh(service, clock)
        [notary] = [c for c in report.checks if c.id == "federation.notary"]
        ages.append(notary.details["age_ms"])
        clock.advance(10)
    assert count("/_matrix/key/v2/query") == 1
    assert count("/_matrix/key/v2/server") == 5, "our own server, every run"
    assert ages == [0, 10_000, 20_000, 30_000, 40_000]
    clock.advance(30)  # 80 s after the first question
    _refresh(service, clock)
    assert count("/_matrix/key/v2/query") == 2
