"""The demo: a throw-away Synapse with the module on a sample config, its
start-up warnings and its report, then it stops (`bash .ci/demo`, which runs
`python -m tests.support.demo` from the repository root)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tests.integration.netlab.netns import NetlabError
from tests.integration.netlab.nginx import NginxError
from tests.support import demo_world
from tests.support.dns_server import NxDomainDnsServer
from tests.support.synapse_process import (
    SUMMARY_RE,
    SynapseError,
    SynapseProcess,
    free_port,
    http_request,
    loopback_http_url,
    port_is_free,
    register_user,
)

MODULE_PATH = "synapse_fedhealth.FedHealthModule"
DEFAULT_DEMO_CONFIG = "sample_homeserver.yaml"
DEFAULT_DEMO_WORKDIR = "demo-data"
SUMMARY_MARGIN_S = 30.0  # on top of startup_delay + timeout


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=DEFAULT_DEMO_CONFIG,
        help="homeserver config to run (default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        default=DEFAULT_DEMO_WORKDIR,
        help="directory for Synapse's database, keys and log (default: %(default)s)",
    )
    parser.add_argument(
        "--real-dns",
        action="store_true",
        help=(
            "resolve with the config's dns_servers or the system's nameservers, "
            "without the demo's own world; by default the module resolves through "
            "a local DNS stub, so nothing leaves this machine"
        ),
    )
    parser.add_argument(
        "--no-world",
        action="store_true",
        help=(
            "skip the demo's own world (a network namespace with DNS, a private "
            "CA and nginx, built when run as root): the report of a Synapse whose "
            "DNS stub knows no names"
        ),
    )


def _module_entry(config: dict[str, Any]) -> dict[str, Any] | None:
    for entry in config.get("modules") or []:
        if isinstance(entry, dict) and entry.get("module") == MODULE_PATH:
            if not isinstance(entry.get("config"), dict):
                entry["config"] = {}
            return entry
    return None


def _duration_s(value: object, default: float) -> float:
    from synapse_fedhealth.config import parse_duration_ms

    try:
        return parse_duration_ms(value) / 1000
    except ValueError:
        return default


def _say(text: str = "") -> None:
    print(text, flush=True)


def _heading(text: str) -> None:
    _say()
    _say(f"== {text} ==")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bash .ci/demo",
        description=(
            "Start Synapse on a sample config with the module, register an admin, "
            "show the module's start-up warnings and the report of "
            "GET /_synapse/fedhealth, then stop Synapse."
        ),
    )
    _add_demo_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`bash .ci/demo`. Exit status 0 when the demo worked."""
    args = build_parser().parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as e:
        print(f"demo: cannot read {args.config}: {e.strerror}", file=sys.stderr)
        return 2
    if not isinstance(config, dict):
        print(f"demo: {args.config} does not hold a homeserver config", file=sys.stderr)
        return 2
    entry = _module_entry(config)
    if entry is None:
        print(
            f"demo: {args.config} has no `modules:` entry for {MODULE_PATH}",
            file=sys.stderr,
        )
        return 2
    secret = config.get("registration_shared_secret")
    if not isinstance(secret, str) or not secret:
        print(
            f"demo: {args.config} needs a registration_shared_secret", file=sys.stderr
        )
        return 2

    # The sample's port may be taken: move the first loopback listener.
    url = loopback_http_url(config)
    if url is None:
        print(
            f"demo: {args.config} has no plain-HTTP listener on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    port = int(url.rsplit(":", 1)[1])
    if not port_is_free(port):
        new_port = free_port()
        _say(f"Port {port} is in use; the demo listens on {new_port} instead.")
        for listener in config["listeners"]:
            if isinstance(listener, dict) and listener.get("port") == port:
                listener["port"] = new_port
        port = new_port

    module_config: dict[str, Any] = entry["config"]
    if not (args.real_dns or args.no_world):
        why_not = demo_world.unavailable_reason()
        if why_not is None:
            return _world_main(args.workdir, config, secret, port)
        _say(f"No world of its own for the demo: {why_not}.")
    dns = None if args.real_dns else NxDomainDnsServer().start()
    if dns is not None:
        module_config["dns_servers"] = [dns.address]
    wait_s = (
        _duration_s(module_config.get("startup_delay", "5s"), 5.0)
        + _duration_s(module_config.get("timeout", "10s"), 10.0)
        + SUMMARY_MARGIN_S
    )

    synapse = SynapseProcess(args.workdir, config)
    try:
        return _run_demo(synapse, secret, module_config, wait_s, dns)
    except (SynapseError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; stopping Synapse", file=sys.stderr)
        return 130
    finally:
        synapse.stop()
        if dns is not None:
            dns.stop()


def _run_demo(
    synapse: SynapseProcess,
    secret: str,
    module_config: Mapping[str, Any],
    wait_s: float,
    dns: NxDomainDnsServer | None,
) -> int:
    server_name = synapse.config.get("server_name")
    _say(f"Starting Synapse for {server_name} in {synapse.directory} ...")
    if dns is not None:
        _say(
            f"DNS: the module asks a local stub at {dns.address} that knows no names, "
            "so no traffic leaves this machine (--real-dns to change that)."
        )
    synapse.start()
    _say(
        f"Synapse answers on {synapse.base_url} (started in {synapse.started_in_s:.1f} s)."
    )

    username = f"demo-admin-{secrets.token_hex(4)}"
    token = register_user(
        synapse.base_url, secret, username, secrets.token_urlsafe(16), True
    )
    _say(f"Registered the server admin @{username}:{server_name}.")

    ok = True
    if module_config.get("startup_check", True):
        _say(f"Waiting up to {wait_s:.0f} s for the start-up check ...")
        match = synapse.wait_for_log(SUMMARY_RE, wait_s)
        if match is None:
            _say("The start-up check logged no summary line.")
            ok = False
        else:
            _say(f"Start-up check: {match.group('summary')}")

    _heading("WARNING lines of the synapse_fedhealth logger")
    warnings = synapse.fedhealth_warnings()
    for line in warnings:
        _say(f"  {line}")
    if not warnings:
        _say("  (none)")

    endpoint = f"{synapse.base_url}/_synapse/fedhealth"
    _heading(f"GET {endpoint}?format=text")
    text = http_request(f"{endpoint}?format=text", token=token)
    _say(text.text.rstrip())
    _heading(f"GET {endpoint}")
    report = http_request(endpoint, token=token)
    try:
        _say(json.dumps(report.json(), indent=2))
    except ValueError:
        _say(report.text)
        ok = False
    for response in (text, report):
        if response.status != 200:
            _say(f"(the endpoint answered {response.status})")
            ok = False

    _heading("Stopping Synapse")
    status = synapse.stop()
    _say(f"Synapse exited with status {status}. Its log: {synapse.log_path}")
    return 0 if ok else 1


# -- the demo's own world ------------------------------------------------------

BREAK_CHECK = "tls.certificate"
BREAK_REASON = "missing_intermediate"
WORLD_STARTUP_DELAY = "1s"  # nginx already serves when Synapse starts


def _world_main(workdir: str, config: dict[str, Any], secret: str, port: int) -> int:
    began = time.monotonic()
    server_name = str(config.get("server_name"))
    public_baseurl = str(config.get("public_baseurl") or f"https://{server_name}/")
    with tempfile.TemporaryDirectory(prefix="fedhealth-demo-") as tmp:
        world = demo_world.DemoWorld(tmp, server_name, public_baseurl)
        synapse: SynapseProcess | None = None
        try:
            world.create(upstream_port=port)
            _configure_for_world(config, port, world)
            synapse = SynapseProcess(workdir, config)
            return _run_world_demo(world, synapse, secret, began)
        except (SynapseError, NginxError, NetlabError, OSError) as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("demo: interrupted; stopping everything", file=sys.stderr)
            return 130
        finally:
            if synapse is not None:
                synapse.stop()
            world.close()


def _configure_for_world(
    config: dict[str, Any], port: int, world: demo_world.DemoWorld
) -> None:
    """The sample config, put behind the world's nginx."""
    for listener in config["listeners"]:
        if isinstance(listener, dict) and listener.get("port") == port:
            # nginx, in the namespace, reaches Synapse over the veth pair.
            listener["bind_addresses"] = ["127.0.0.1", world.host_ip]
            listener["x_forwarded"] = True
    # A private federation: the world's addresses are private ones.
    config["ip_range_whitelist"] = [world.network]
    entry = _module_entry(config)
    assert entry is not None
    module_config: dict[str, Any] = entry["config"]
    assert world.dns is not None
    module_config["dns_servers"] = [world.dns.address]
    module_config["tls_ca_file"] = str(world.ca_file)
    module_config["startup_delay"] = WORLD_STARTUP_DELAY


def _run_world_demo(
    world: demo_world.DemoWorld, synapse: SynapseProcess, secret: str, began: float
) -> int:
    config = synapse.config
    server_name = config.get("server_name")
    assert world.dns is not None
    _say(f"The demo's world: network namespace {world.netns.name} ({world.network}),")
    _say(f"  nginx on {world.ns_ip}:443 with a certificate from a private CA,")
    _say(f"  DNS stub on {world.dns.address} that knows only {server_name},")
    _say(f"  {world.delegated} and {world.ca_host} (the CA's AIA URL).")
    _say(f"A private federation: Synapse's ip_range_whitelist allows {world.network}.")
    _say(f"Starting Synapse for {server_name} in")
    _say(f"  {synapse.directory} ...")
    synapse.start()
    _say(
        f"Synapse answers on {synapse.base_url} (started in {synapse.started_in_s:.1f} s)."
    )
    username = f"demo-admin-{secrets.token_hex(4)}"
    token = register_user(
        synapse.base_url, secret, username, secrets.token_urlsafe(16), True
    )
    _say(f"Registered the server admin @{username}:{server_name}.")
    match = synapse.wait_for_log(SUMMARY_RE, SUMMARY_MARGIN_S)
    _say(
        "Start-up check: "
        + (match.group("summary") if match else "(no summary line logged)")
    )
    _heading("WARNING lines of the synapse_fedhealth logger")
    warnings = synapse.fedhealth_warnings()
    for line in warnings:
        for i, part in enumerate(_wrap(line, 76)):
            _say(f"  {part}" if i == 0 else f"    {part}")
    if not warnings:
        _say("  (none)")

    endpoint = f"{synapse.base_url}/_synapse/fedhealth"
    host = world.delegated
    _heading("1/3 healthy setup")
    _say(f"GET {endpoint}?format=text")
    healthy = _report(endpoint, token)

    _heading("2/3 break: nginx serves the leaf certificate without its intermediate")
    _say(f"(nginx, server block {host}: ssl_certificate leaf.pem,")
    _say(" was fullchain.pem; the config rewritten, nginx reloaded with HUP)")
    world.serve_leaf_only()
    broken = _report(endpoint, token)
    named = [
        c
        for c in broken.get("checks", [])
        if c.get("id") == BREAK_CHECK
        and c.get("status") == "fail"
        and (c.get("details") or {}).get("reason") == BREAK_REASON
    ]
    if named:
        _say(f"-> {BREAK_CHECK} fails with reason {BREAK_REASON}; its fix:")
        for line in _wrap(str(named[0].get("fix") or "(no fix given)"), 77):
            _say(f"   {line}")
    else:
        _say(f"-> the report does not name {BREAK_CHECK} {BREAK_REASON}")

    _heading("3/3 fix: nginx serves the full chain (leaf + intermediate) again")
    _say(f"(nginx, server block {host}: ssl_certificate fullchain.pem")
    _say(" again; the config rewritten, nginx reloaded with HUP)")
    world.serve_full_chain()
    fixed = _report(endpoint, token)

    _heading("Stopping Synapse, nginx, the DNS stub and the namespace")
    status = synapse.stop()
    world.close()
    _say(f"Synapse exited with status {status}. Its log:")
    _say(f"  {synapse.log_path}")
    verdicts = [str(r.get("verdict")) for r in (healthy, broken, fixed)]
    took_s = time.monotonic() - began
    _say(
        f"Verdicts: healthy {verdicts[0]}, broken {verdicts[1]}, "
        f"fixed {verdicts[2]} ({took_s:.0f} s in all)."
    )
    return 0 if named and verdicts[0] == "ok" and verdicts[2] == "ok" else 1


def _report(endpoint: str, token: str) -> dict[str, Any]:
    """A fresh run (JSON), then the same report as text, printed."""
    response = http_request(f"{endpoint}?refresh=true", token=token)
    if response.status != 200:
        raise SynapseError(f"GET {endpoint}: {response.status} {response.text[:200]}")
    report: dict[str, Any] = response.json()
    text = http_request(f"{endpoint}?format=text", token=token)
    _say(text.text.rstrip())
    return report


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines():
        lines += textwrap.wrap(paragraph, width) or [""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
