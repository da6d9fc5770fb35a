"""Synapse's own parts that the unit tests use, where older releases
(down to `synapse_fedhealth.synapse_versions.OLDEST_SUPPORTED`) keep them
elsewhere or call them differently. The `oldest` tox env runs the suite on
the oldest release."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from synapse.crypto.keyring import Keyring
from synapse.logging import context as logcontext
from synapse.metrics import background_process_metrics


def json_encoder() -> Any:
    """Synapse's canonical JSON encoder (`synapse.util.json` since 1.137-1.140,
    `synapse.util` before)."""
    try:
        return importlib.import_module("synapse.util.json").json_encoder
    except ImportError:
        return importlib.import_module("synapse.util").json_encoder


def request_logcontext(name: str, server_name: str) -> Any:
    """A LoggingContext as Synapse makes one for a request; newer releases
    name the homeserver it belongs to."""
    make: Any = getattr(logcontext, "LoggingContext")  # noqa: B009
    try:
        return make(name=name, server_name=server_name)
    except TypeError:  # before 1.136: no server_name
        return make(name=name)


def keyring_process_json() -> Callable[..., Awaitable[None]]:
    """`Keyring.process_json` (private `_process_json` before 1.137-1.140)."""
    found: Callable[..., Awaitable[None]] | None = getattr(
        Keyring, "process_json", None
    ) or getattr(Keyring, "_process_json", None)
    assert found is not None, "Synapse's Keyring verifies signatures somewhere"
    return found


def mas_auth_class() -> type | None:
    """Synapse's Matrix Authentication Service auth, where it has one."""
    try:
        module = importlib.import_module("synapse.api.auth.mas")
    except ImportError:
        return None
    found: type = module.MasDelegatedAuth
    return found


def background_process_runner(server_name: str) -> Callable[..., Any]:
    """What `ModuleApi.run_as_background_process(desc, func, *args)` does,
    with Synapse's own function (it takes the server name since 1.136)."""
    run: Any = background_process_metrics.run_as_background_process
    if "server_name" in inspect.signature(run).parameters:
        return lambda desc, func, *args, **kwargs: run(
            desc, server_name, func, *args, **kwargs
        )
    return lambda desc, func, *args, **kwargs: run(desc, func, *args, **kwargs)
