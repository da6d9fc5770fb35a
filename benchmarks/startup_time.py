"""Synapse's start-up time with and without synapse-fedhealth.

    python benchmarks/startup_time.py [-n 3]

Starts a small sqlite Synapse on loopback N times with the module and N times
without (interleaved, after one untimed warm-up start of each, which creates
the database), and prints the median time from spawning the process to the
first 200 from /health. The module's DNS goes to a local stub, so nothing
leaves the machine.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import attr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.support.dns_server import NxDomainDnsServer
from tests.support.synapse_process import SynapseProcess, free_port

SHARED_SECRET = "benchmark-shared-secret"


def _config(port: int, dns: NxDomainDnsServer | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server_name": "fedhealth.test",
        "public_baseurl": "https://matrix.fedhealth.test/",
        "report_stats": False,
        "signing_key_path": "signing.key",
        "media_store_path": "media_store",
        "registration_shared_secret": SHARED_SECRET,
        "macaroon_secret_key": "benchmark-macaroon-secret",
        "form_secret": "benchmark-form-secret",
        "trusted_key_servers": [],
        "database": {"name": "sqlite3", "args": {"database": "homeserver.db"}},
        "listeners": [
            {
                "port": port,
                "type": "http",
                "bind_addresses": ["127.0.0.1"],
                "resources": [{"names": ["client", "federation"]}],
            }
        ],
    }
    if dns is not None:
        config["modules"] = [
            {
                "module": "synapse_fedhealth.FedHealthModule",
                "config": {
                    "startup_delay": "5s",
                    "timeout": "3s",
                    "dns_servers": [dns.address],
                },
            }
        ]
    return config


VARIANTS = ("without the module", "with the module")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class StartupSamples:
    """Per variant: seconds from spawn to the first 200 from /health, and the
    process's resident memory (bytes) at that moment."""

    seconds: dict[str, list[float]]
    rss_bytes: dict[str, list[int]]


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def compile_package() -> None:
    """Byte-compile the package, as `pip install` does: with
    PYTHONDONTWRITEBYTECODE set (as in some shells and containers) every
    start would compile it from source again, about 0.3 s that an installed
    module never costs."""
    compileall.compile_dir(
        str(Path(__file__).resolve().parents[1] / "synapse_fedhealth"),
        quiet=1,
        workers=1,
        force=False,
    )


def measure(n: int) -> StartupSamples:
    """N interleaved timed starts of each variant, after one untimed warm-up
    start of each (which creates the keys and the database)."""
    compile_package()
    samples = StartupSamples({v: [] for v in VARIANTS}, {v: [] for v in VARIANTS})
    with NxDomainDnsServer() as dns, tempfile.TemporaryDirectory() as tmp:
        variants = {
            VARIANTS[0]: SynapseProcess(Path(tmp, "plain"), _config(free_port(), None)),
            VARIANTS[1]: SynapseProcess(Path(tmp, "module"), _config(free_port(), dns)),
        }
        for process in variants.values():  # warm-up: keys and database schema
            process.start()
            process.stop()
        for _ in range(n):
            for name, process in variants.items():
                process.start()
                assert process.started_in_s is not None and process.process
                samples.seconds[name].append(process.started_in_s)
                samples.rss_bytes[name].append(rss_bytes(process.process.pid))
                process.stop()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("-n", type=int, default=3, help="timed starts per variant")
    args = parser.parse_args(argv)

    samples = measure(args.n).seconds
    for name, values in samples.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:>20}: median {statistics.median(values):.2f} s  ({shown})")
    overhead = statistics.median(samples["with the module"]) - statistics.median(
        samples["without the module"]
    )
    print(f"{'difference':>20}: {overhead:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
