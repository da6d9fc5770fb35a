"""A Synapse module that puts this server's own signing key on Synapse's
banned list (`synapse.crypto.keyring.BANNED_SERVER_SIGNING_KEYS`), for
tests/integration/test_outbound.py: a controlled banned key, since the
private half of the real banned key is not ours to use.

Listed before synapse_fedhealth under `modules:`, so the list is extended
before the module's start-up config checks. Its config:
`{"padded_key": "<base64 with padding, as Synapse writes its list>"}`.
"""

from __future__ import annotations

from typing import Any


class BanOwnKey:
    def __init__(self, config: dict[str, Any], api: Any) -> None:
        from synapse.crypto import keyring

        banned: Any = (*keyring.BANNED_SERVER_SIGNING_KEYS, str(config["padded_key"]))
        keyring.BANNED_SERVER_SIGNING_KEYS = banned

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        return config
