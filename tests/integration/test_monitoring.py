"""Periodic monitoring against real components (SPEC 2.3, 2.4).

A real Synapse runs the module with `interval: 10s` behind the lab's nginx,
with Synapse's metrics enabled. The setup works, then breaks (nginx's
upstream for the vhost goes down: 502), then is repaired, while the module
runs on its own schedule. The log must show exactly one WARNING per check
that got worse and one INFO recovery per check that got better (plus one
verdict summary line per change), and `/_synapse/metrics` must follow:
`federation_ok` 1 -> 0 -> 1, `check_status` 0 -> 2 -> 0, the last-run
timestamp advancing, the run's duration, and the certificate's notAfter.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import logcontext_errors, tracebacks_from_us
from tests.integration.module_lab import (
    ModuleHomeserver,
    append_rows,
    metric_samples,
    metric_value,
)
from tests.integration.netlab.certs import Pki
from tests.integration.netlab.dns_server import DnsServer
from tests.integration.netlab.fixtures import *  # noqa: F403
from tests.integration.netlab.fixtures import require_root
from tests.integration.netlab.lab import Lab
from tests.integration.netlab.nginx import (
    ProxyVariant,
    Vhost,
    WellKnown,
    nginx_available,
    well_known_server,
)
from tests.integration.netlab.peer import PeerSynapse

pytestmark = pytest.mark.integration

INTERVAL_S = 10  # the module's minimum
STARTUP_DELAY_S = 1
RUN_TIMEOUT_S = 3
# A periodic run is due every INTERVAL_S; allow one interval plus the run.
RUN_WAIT_S = INTERVAL_S + RUN_TIMEOUT_S + 5
POLL_S = 0.2

FEDERATION_OK = "synapse_fedhealth_federation_ok"
CHECK_STATUS = "synapse_fedhealth_check_status"
LAST_RUN = "synapse_fedhealth_last_run_timestamp_seconds"
RUN_DURATION = "synapse_fedhealth_run_duration_seconds"
CERT_EXPIRY = "synapse_fedhealth_tls_certificate_expiry_timestamp_seconds"

# `<time> - synapse_fedhealth - <line> - LEVEL - <request> - <message>`
FEDHEALTH_LINE_RE = re.compile(
    r"^\S+ \S+ - synapse_fedhealth(?:\.[\w.]+)? - \d+ - (?P<level>[A-Z]+) - "
    r"(?P<request>.*?) - (?P<message>.*)$",
    re.MULTILINE,
)


@pytest.fixture
def monitoring_lab(
    tmp_path: Path,
    netlab_pki: Pki,
    netlab_dns: DnsServer,
    netlab_peer_provider: Callable[[], PeerSynapse],
) -> Iterator[Lab]:
    require_root()
    if not nginx_available():
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    lab = Lab(
        tmp_path / "lab", pki=netlab_pki, dns=netlab_dns, peer=netlab_peer_provider
    )
    try:
        yield lab
    finally:
        lab.close()


def fedhealth_lines(log: str) -> list[tuple[str, str]]:
    """(level, message) of every line of the module's logger."""
    return [(m["level"], m["message"]) for m in FEDHEALTH_LINE_RE.finditer(log)]


class Scrape:
    """One scrape of /_synapse/metrics, for our server name."""

    def __init__(self, text: str, server_name: str) -> None:
        self.text = text
        self.server_name = server_name

    def value(self, name: str, **labels: str) -> float | None:
        return metric_value(self.text, name, server_name=self.server_name, **labels)

    def statuses(self) -> dict[str, float]:
        return {
            labels["check"]: v
            for labels, v in metric_samples(self.text, CHECK_STATUS)
            if labels.get("server_name") == self.server_name
        }


def wait_for_run(
    hs: ModuleHomeserver, after: float, *, federation_ok: float, timeout: float
) -> Scrape:
    """Poll the metrics until a run newer than `after` published
    `federation_ok`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Scrape | None = None
    while time.monotonic() < deadline:
        scrape = Scrape(hs.metrics_text(), hs.server_name)
        last_run = scrape.value(LAST_RUN)
        if (
            last_run is not None
            and last_run > after
            and scrape.value(FEDERATION_OK) == federation_ok
        ):
            return scrape
        last = scrape
        time.sleep(POLL_S)
    shown = "" if last is None else last.text[-3000:]
    raise AssertionError(
        f"no run with federation_ok={federation_ok} after {after} within {timeout} s\n"
        f"{shown}\n--- log ---\n{hs.process.log_text()[-4000:]}"
    )


def test_periodic_run_transitions_and_metrics(
    tmp_path: Path, monitoring_lab: Lab
) -> None:
    began = time.monotonic()
    lab = monitoring_lab
    name = lab.server_name("monitor")
    cert = lab.cert(name)
    hs = ModuleHomeserver(
        tmp_path / "hs",
        name,
        lab,
        public_baseurl=f"https://{name}/",
        resources=("client", "federation", "metrics"),
        module={
            "startup_check": True,
            "startup_delay": f"{STARTUP_DELAY_S}s",
            "interval": f"{INTERVAL_S}s",
            "timeout": f"{RUN_TIMEOUT_S}s",
        },
        enable_metrics=True,
    )
    ip = lab.ip("monitor")
    lab.with_zone({name: {"A": ip}})

    def serve(proxy: ProxyVariant) -> None:
        lab.with_nginx(
            Vhost(
                address=ip,
                server_names=(name,),
                cert=cert,
                well_known_server=well_known_server(f"{name}:443"),
                well_known_client=WellKnown(
                    {"m.homeserver": {"base_url": f"https://{name}/"}},
                    headers={"Access-Control-Allow-Origin": "*"},
                ),
                proxy=proxy,
                upstream=hs.upstream,
            )
        )

    serve(ProxyVariant.CORRECT)
    target = f"{ip}:443"
    version_line = f"federation.version [{target}]: "
    try:
        hs.start()

        # 1. Working: the start-up run (and any periodic run) says so.
        ok1 = wait_for_run(hs, 0.0, federation_ok=1.0, timeout=RUN_WAIT_S)
        t1 = ok1.value(LAST_RUN)
        assert t1 is not None
        assert ok1.value(CHECK_STATUS, check="federation.version") == 0.0
        before = ok1.statuses()
        duration = ok1.value(RUN_DURATION)
        assert duration is not None and 0 < duration <= RUN_TIMEOUT_S + 1, duration
        expiry = ok1.value(CERT_EXPIRY, host=name)
        assert expiry == cert.not_after.timestamp(), (expiry, cert.not_after)

        # 2. Broken: the proxy's upstream is down (502 on /_matrix).
        serve(ProxyVariant.UPSTREAM_DOWN)
        broken = wait_for_run(hs, t1, federation_ok=0.0, timeout=RUN_WAIT_S)
        t2 = broken.value(LAST_RUN)
        assert t2 is not None and t2 > t1
        assert broken.value(CHECK_STATUS, check="federation.version") == 2.0
        worse = sorted(
            c for c, v in broken.statuses().items() if v > before.get(c, 0.0)
        )
        assert "federation.version" in worse, broken.statuses()

        # 3. Repaired.
        serve(ProxyVariant.CORRECT)
        ok3 = wait_for_run(hs, t2, federation_ok=1.0, timeout=RUN_WAIT_S)
        t3 = ok3.value(LAST_RUN)
        assert t3 is not None and t3 > t2
        assert ok3.value(CHECK_STATUS, check="federation.version") == 0.0
        assert ok3.statuses() == before, (before, ok3.statuses())
    finally:
        hs.stop()
    log = hs.process.log_text()
    lines = fedhealth_lines(log)
    text = "\n".join(f"{lvl} {msg}" for lvl, msg in lines)

    # The first report (start-up) is logged in full; after that only changes.
    summaries = [(lvl, m) for lvl, m in lines if m.startswith("federation ")]
    assert [lvl for lvl, _ in summaries][:1] == ["INFO"], text
    changes = summaries[1:]
    assert [(lvl, m.split(":")[0].split(" (")[0]) for lvl, m in changes] == [
        ("WARNING", "federation BROKEN"),
        ("INFO", "federation OK"),
    ], text
    assert "federation.version" in changes[0][1], changes

    # Exactly one WARNING transition and one INFO recovery for the check.
    went_bad = [
        m for lvl, m in lines if lvl == "WARNING" and m.startswith(version_line)
    ]
    assert len(went_bad) == 1, text
    assert went_bad[0].endswith("(was ok)"), went_bad
    assert "; fix: " in went_bad[0], went_bad
    assert "502" in went_bad[0], went_bad
    recovered = [
        m
        for lvl, m in lines
        if lvl == "INFO"
        and m.startswith(f"federation.version [{target}] recovered (fail -> ok)")
    ]
    assert len(recovered) == 1, text

    # Every check that got worse (one target here): exactly one WARNING
    # "(was ok)" line, and exactly one INFO recovery; no other transitions.
    transitions = [(lvl, m) for lvl, m in lines if m.endswith(")") and "(was " in m] + [
        (lvl, m) for lvl, m in lines if " recovered (" in m
    ]
    # "<check id> [<target>]: ..." or, without a target, "<check id>: ...".
    went_worse = sorted(
        re.split(r"[ :]", m, maxsplit=1)[0] for lvl, m in transitions if "(was " in m
    )
    came_back = sorted(
        re.split(r"[ :]", m, maxsplit=1)[0]
        for lvl, m in transitions
        if "recovered" in m
    )
    assert went_worse == worse, text
    assert came_back == worse, text
    assert all(lvl == "WARNING" for lvl, m in transitions if "(was " in m), text
    assert all(lvl == "INFO" for lvl, m in transitions if "recovered" in m), text

    append_rows(
        [
            {
                "scenario": "monitoring: working -> upstream down (502) -> repaired",
                "check": "(periodic runs)",
                "interval_s": INTERVAL_S,
                "run_duration_s": [
                    duration,
                    broken.value(RUN_DURATION),
                    ok3.value(RUN_DURATION),
                ],
                "last_run_ts": [t1, t2, t3],
                "went_worse": went_worse,
                "transition_lines": [f"{lvl} {m[:160]}" for lvl, m in transitions]
                + [f"{lvl} {m}" for lvl, m in changes],
                "test_wall_s": round(time.monotonic() - began, 1),
            }
        ]
    )

    # Logged in Synapse's rules: no logcontext complaints, no tracebacks.
    assert not logcontext_errors(log), logcontext_errors(log)
    assert not tracebacks_from_us(log), tracebacks_from_us(log)
    assert time.monotonic() - began < 60, time.monotonic() - began
