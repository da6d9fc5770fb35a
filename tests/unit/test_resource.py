"""The admin endpoint's serving path, through Synapse's own request class on
an in-memory HTTP connection: authentication on every request, then the
body encoded once per report and format."""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, cast

import pytest
from synapse.api.errors import InvalidClientTokenError, MissingClientTokenError
from synapse.http.site import SynapseRequest
from synapse.module_api import Requester
from synapse.types import create_requester
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from synapse_fedhealth.remote_text import clean_json
from synapse_fedhealth.render.bodies import ReportBodies
from synapse_fedhealth.report import Report, fail, ok
from synapse_fedhealth.resource import FedHealthResource

try:
    from synapse.util.json import json_encoder
except ImportError:  # Synapse before 1.131
    from synapse.util import json_encoder  # type: ignore[attr-defined,no-redef]

# Newer Synapses name the server a request is for.
_REQUEST_ARGS: dict[str, Any] = (
    {"our_server_name": "example.com"}
    if "our_server_name" in inspect.signature(SynapseRequest.__init__).parameters
    else {}
)

ADMIN = "@admin:example.com"
USER = "@user:example.com"


def _report(summary: str = "answers 1.163", generated_at: int = 1_000) -> Report:
    return Report.build(
        server_name="example.com",
        checks=[
            ok("federation.version", summary, target="192.0.2.1:8448"),
            fail("tls.certificate", "expired", fix="Renew it."),
        ],
        federation_disabled=False,
        generated_at=generated_at,
        duration_ms=12,
    )


class FakeApi:
    """The two ModuleApi calls the resource makes; `tokens` maps a bearer
    token to its user, `admins` the users who are server admins."""

    def __init__(self) -> None:
        self.tokens = {"admin-token": ADMIN, "user-token": USER}
        self.admins = {ADMIN}
        self.authentications = 0

    async def get_user_by_req(self, request: SynapseRequest) -> Requester:
        self.authentications += 1
        header = request.requestHeaders.getRawHeaders(b"Authorization")
        if not header:
            raise MissingClientTokenError()
        token = header[0].decode().removeprefix("Bearer ")
        if token not in self.tokens:
            raise InvalidClientTokenError()
        return create_requester(self.tokens[token])

    async def is_user_admin(self, user_id: str) -> bool:
        return user_id in self.admins


class Reports:
    """The report source: the same report until `refresh` asks a new one."""

    def __init__(self) -> None:
        self.current = _report()
        self.runs = 0

    async def get(self, refresh: bool) -> Report:
        if refresh:
            self.runs += 1
            self.current = _report(f"run {self.runs}", 1_000 + self.runs)
        return self.current


class _SyncThreadPool:
    def callInThreadWithCallback(
        self, on_result: Any, f: Any, *args: Any, **kwargs: Any
    ) -> None:
        try:
            result = f(*args, **kwargs)
        except Exception as e:
            on_result(False, e)
        else:
            on_result(True, result)


class _Reactor(MemoryReactorClock):
    """Synapse encodes its JSON errors in a thread: here, right away."""

    def getThreadPool(self) -> _SyncThreadPool:
        return _SyncThreadPool()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class _Site(Site):
    """What SynapseRequest reads from its site."""

    site_tag = "test"
    server_version_string = "test"
    access_logger = logging.getLogger("tests.access")
    experimental_cors_msc3886 = False  # read by Synapse before 1.111

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.reactor: Any = _Reactor()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        site: Any = self
        channel.requestFactory = lambda ch, queued: SynapseRequest(
            ch, site, max_request_body_size=1024, **_REQUEST_ARGS
        )
        return channel


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") == "chunked":
            self.body = _dechunk(self.body)


def _dechunk(raw: bytes) -> bytes:
    out = b""
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        out, raw = out + raw[:length], raw[length + 2 :]
    return out


class Endpoint:
    def __init__(self) -> None:
        self.api = FakeApi()
        self.reports = Reports()
        self.resource = FedHealthResource(self.api, self.reports.get)  # type: ignore[arg-type]
        root, synapse = Resource(), Resource()
        # The same tree Synapse builds for `register_web_resource`.
        root.putChild(b"_synapse", cast(IResource, synapse))
        synapse.putChild(b"fedhealth", cast(IResource, self.resource))
        self.site = _Site(root)

    def get(self, query: str = "", token: str | None = "admin-token") -> Response:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        channel.dataReceived(
            f"GET /_synapse/fedhealth{query} HTTP/1.1\r\nHost: example.com\r\n"
            f"{auth}\r\n".encode()
        )
        return Response(transport.value())


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint()


def test_json_is_encoded_once_per_report(endpoint: Endpoint) -> None:
    first = endpoint.get()
    again = [endpoint.get() for _ in range(3)]
    assert first.status == 200
    assert all(r.body == first.body for r in again)
    assert endpoint.resource.bodies.encodings == {"json": 1}
    assert endpoint.api.authentications == 4


def test_json_body_is_what_synapse_would_have_encoded(endpoint: Endpoint) -> None:
    response = endpoint.get()
    report = endpoint.reports.current
    assert response.body == json_encoder.encode(clean_json(report.to_json())).encode()
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.body))
    # Older Synapses send their own "no-cache, no-store, must-revalidate".
    assert "no-store" in response.headers["cache-control"]
    # As before: Synapse's JSON responses carry CORS headers.
    assert response.headers["access-control-allow-origin"] == "*"


def test_refresh_gives_new_bytes(endpoint: Endpoint) -> None:
    before = endpoint.get()
    refreshed = endpoint.get("?refresh=true")
    after = endpoint.get()
    assert json.loads(before.body)["checks"][0]["summary"] == "answers 1.163"
    assert json.loads(refreshed.body)["checks"][0]["summary"] == "run 1"
    assert after.body == refreshed.body
    assert endpoint.resource.bodies.encodings == {"json": 2}


@pytest.mark.parametrize(
    ("token", "status", "errcode"),
    [
        (None, 401, "M_MISSING_TOKEN"),
        ("stolen", 401, "M_UNKNOWN_TOKEN"),
        ("user-token", 403, "M_FORBIDDEN"),
    ],
)
def test_auth_runs_before_cached_bytes(
    endpoint: Endpoint, token: str | None, status: int, errcode: str
) -> None:
    assert endpoint.get().status == 200  # the bytes are cached now
    refused = endpoint.get(token=token)
    assert refused.status == status
    assert json.loads(refused.body)["errcode"] == errcode
    assert b"example.com" not in refused.body
    assert endpoint.api.authentications == 2


def test_each_format_is_encoded_once(endpoint: Endpoint) -> None:
    for _ in range(2):
        text = endpoint.get("?format=text")
        html = endpoint.get("?format=html")
        plain = endpoint.get("?format=json")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert b"federation.version" in text.body
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert html.headers["cache-control"] == "no-store"
    assert "content-security-policy" in html.headers
    assert b"<!DOCTYPE html>" in html.body
    assert json.loads(plain.body)["verdict"] == "broken"
    assert endpoint.resource.bodies.encodings == {"json": 1, "text": 1, "html": 1}


def test_bad_format_is_refused_before_anything_is_encoded(endpoint: Endpoint) -> None:
    response = endpoint.get("?format=xml")
    assert response.status == 400
    assert not endpoint.resource.bodies.encodings


def test_browser_without_token_gets_the_sign_in_page(endpoint: Endpoint) -> None:
    response = endpoint.get("?format=html", token=None)
    assert response.status == 401
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<form" in response.body
    assert not endpoint.resource.bodies.encodings


def test_bodies_keep_only_the_latest_report() -> None:
    made: list[Report] = []

    def encode(report: Report) -> bytes:
        made.append(report)
        return report.checks[0].summary.encode()

    bodies = ReportBodies({"json": encode})
    first, second = _report("one"), _report("two")
    assert bodies.body(first, "json") == b"one"
    assert bodies.body(first, "json") == b"one"
    assert bodies.body(second, "json") == b"two"
    # An equal but new report object is a new report: encoded again.
    assert bodies.body(first, "json") == b"one"
    assert made == [first, second, first]


def test_json_body_survives_a_lone_surrogate() -> None:
    report = _report("bad \udcff text \x1b[31m")
    body = ReportBodies().body(report, "json")
    summary = json.loads(body)["checks"][0]["summary"]
    assert "\udcff" not in summary and "\x1b" not in summary
    assert summary.startswith("bad ")
