"""What the module costs Synapse's start-up: loading it imports only what
start-up needs, and what only a run needs (the engine, the network stack,
Synapse's federation TLS policy) is made by the first run."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from synapse_fedhealth import homeserver

ROOT = Path(__file__).resolve().parents[2]

# Imported by a run, never by loading the module: dnspython and our network
# stack, the engine and the families (about 110 ms of imports together).
RUN_ONLY_MODULES = (
    "dns.resolver",
    "synapse_fedhealth.net.dns",
    "synapse_fedhealth.net.http",
    "synapse_fedhealth.net.tls",
    "synapse_fedhealth.engine.network_checker",
    "synapse_fedhealth.engine.probes",
    "synapse_fedhealth.families.network",
    "synapse_fedhealth.families.outbound",
    "synapse_fedhealth.checks.outbound",
)

_PROBE = """
import json, sys
import synapse_fedhealth
module_class = synapse_fedhealth.FedHealthModule  # what Synapse's loader asks for
from synapse_fedhealth.wiring import ProcessIO
ProcessIO(object()).stop()  # built and stopped before any run
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout))


def test_loading_the_module_imports_no_run_only_code() -> None:
    loaded = _modules_after(_PROBE)
    assert "synapse_fedhealth.module" in loaded
    assert "synapse_fedhealth.checks.config_lint" in loaded  # start-up needs it
    assert sorted(loaded.intersection(RUN_ONLY_MODULES)) == []


def _api_for_outbound() -> Any:
    api = mock.MagicMock()
    hs = api._hs
    hs.hostname = "example.com"
    hs.get_instance_name.return_value = "master"
    api.server_name = "example.com"
    # This instance sends its own federation traffic.
    hs.config.worker.outbound_federation_restricted_to.__contains__.return_value = True
    hs.config.tls.federation_client_minimum_tls_version = "1.2"
    hs.config.server.proxy_config = None  # no http(s)_proxy
    return api


def _synapse_outbound_available() -> bool:
    """The module reaches other servers through Synapse's own agent from
    Synapse 1.136 on (its caches take the server name); before, the module
    skips outbound.reach (README)."""
    from synapse.util.caches.ttlcache import TTLCache

    return "server_name" in inspect.signature(TTLCache.__init__).parameters


@pytest.mark.skipif(
    not _synapse_outbound_available(),
    reason="this Synapse's agent is not available to the module (before 1.136)",
)
def test_synapse_tls_policy_is_made_by_the_first_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Synapse's FederationPolicyForHTTPS loads the system's CA store: about
    # 13 ms that the homeserver's start-up would wait for.
    import synapse.crypto.context_factory as context_factory

    made: list[Any] = []

    def policy(config: Any) -> Any:
        made.append(config)
        return mock.Mock(name="FederationPolicyForHTTPS")

    monkeypatch.setattr(context_factory, "FederationPolicyForHTTPS", policy)
    monkeypatch.setattr(homeserver, "user_agent_of", lambda api: "Synapse/test")
    api = _api_for_outbound()
    outbound = homeserver.SynapseOutbound(api)
    assert made == []
    first = outbound._agents_for_probes()
    assert made == [api._hs.config]
    assert first.tls_policy is not None and first.worker_agent is None
    assert outbound._agents_for_probes() is first
    assert len(made) == 1


def _imported_inside_functions(path: Path) -> set[str]:
    """The synapse_fedhealth modules a file imports inside its functions."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "synapse_fedhealth."
            ):
                found.add(node.module or "")
    return found


def test_the_preload_covers_what_a_run_imports_lazily() -> None:
    from synapse_fedhealth.wiring import RUN_MODULES

    lazily = _imported_inside_functions(
        ROOT / "synapse_fedhealth" / "wiring.py"
    ) | _imported_inside_functions(
        ROOT / "synapse_fedhealth" / "families" / "__init__.py"
    )
    # (runner is loaded at start-up already: the report cache needs it.)
    assert sorted(lazily - set(RUN_MODULES) - {"synapse_fedhealth.runner"}) == []
    loaded = _modules_after(
        "import json, sys\n"
        "import synapse_fedhealth.module\n"
        "from synapse_fedhealth.wiring import import_run_modules\n"
        "import_run_modules()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert sorted(set(RUN_ONLY_MODULES) - loaded) == []
