"""The endpoint takes Synapse's own server-admin decision (its auth layer),
not the database flag: under Matrix Authentication Service the token's
`urn:synapse:admin:*` scope decides. The database flag only where the auth
layer cannot be reached."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from synapse.api.errors import AuthError
from synapse.types import create_requester
from twisted.internet import defer
from twisted.python.failure import Failure

from synapse_fedhealth.resource import FedHealthResource

from .synapse_releases import mas_auth_class

ADMIN_SCOPE = "urn:synapse:admin:*"
USER = "@alice:example.com"


MAS_AUTH = mas_auth_class()
needs_mas = pytest.mark.skipif(
    MAS_AUTH is None, reason="this Synapse has no MAS auth (synapse.api.auth.mas)"
)


def _mas_auth() -> Any:
    """Synapse's MAS auth, whose admin decision reads only the token's scope
    (built without the HTTP clients it would use to introspect tokens)."""
    assert MAS_AUTH is not None
    return object.__new__(MAS_AUTH)


def _api(*, db_admin: bool, scope: list[str], auth: Any | None) -> mock.Mock:
    api = mock.Mock(spec=["get_user_by_req", "is_user_admin", "_hs"])
    requester = create_requester(USER, scope=scope)
    api.get_user_by_req = mock.AsyncMock(return_value=requester)
    api.is_user_admin = mock.AsyncMock(return_value=db_admin)
    if auth is None:
        del api._hs  # a Synapse that moved it
    else:
        api._hs = mock.Mock()
        api._hs.get_auth.return_value = auth
    return api


def _decide(api: mock.Mock) -> bool:
    resource = FedHealthResource(api, lambda refresh: defer.Deferred())
    d = defer.ensureDeferred(resource._require_admin(mock.Mock()))
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "decided synchronously"
    if isinstance(outcome[0], Failure):
        assert isinstance(outcome[0].value, AuthError)
        assert outcome[0].value.code == 403
        return False
    return True


@needs_mas
def test_mas_admin_scope_without_the_db_flag_is_let_in() -> None:
    api = _api(db_admin=False, scope=[ADMIN_SCOPE], auth=_mas_auth())
    assert _decide(api) is True
    api.is_user_admin.assert_not_called()


@needs_mas
def test_db_flag_without_the_admin_scope_is_refused_under_mas() -> None:
    api = _api(db_admin=True, scope=["urn:matrix:client:api:*"], auth=_mas_auth())
    assert _decide(api) is False


@pytest.mark.parametrize("db_admin", [True, False])
def test_without_the_auth_layer_the_db_flag_decides(db_admin: bool) -> None:
    api = _api(db_admin=db_admin, scope=[ADMIN_SCOPE], auth=None)
    assert _decide(api) is db_admin
    api.is_user_admin.assert_awaited_once_with(USER)


def test_a_synapse_without_hs_gives_a_report_line_not_an_error() -> None:
    from synapse_fedhealth.config import parse_fedhealth_config
    from synapse_fedhealth.module import FedHealthModule

    from .test_module import _mock_api

    api = _mock_api()
    del api._hs
    api.should_run_background_tasks.return_value = False
    module = FedHealthModule(parse_fedhealth_config({}), api)
    outcome: list[Any] = []
    module.get_report(False).addBoth(outcome.append)
    [report] = outcome
    assert report.verdict.value == "broken"
    [line] = [c for c in report.checks if c.details.get("reason") == "error"]
    assert "no longer exposes the homeserver (_hs)" in line.summary
    assert report.to_json()["checks"]
