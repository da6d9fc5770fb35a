"""Run a real Synapse with the module: the `demo` command, and the process
control that the integration tests and the start-up benchmark share.

Nothing here imports Synapse: Synapse always runs as a child process
(`python -m synapse.app.homeserver`), never daemonized, and every wait is
bounded. A started process is stopped by `stop()`, by leaving the `with`
block, or at interpreter exit at the latest.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import attr
import yaml

HEALTH_TIMEOUT_S = 60.0  # Synapse answers /health after about 3 s here
STOP_TIMEOUT_S = 15.0  # between SIGTERM and SIGKILL
KILL_TIMEOUT_S = 5.0
GENERATE_KEYS_TIMEOUT_S = 60.0
FAILED_START_TIMEOUT_S = 60.0  # a start-up that should fail must end within this
POLL_INTERVAL_S = 0.1
PR_SET_PDEATHSIG = 1  # linux/prctl.h
HTTP_TIMEOUT_S = 30.0

HOMESERVER_CONFIG_NAME = "homeserver.yaml"
LOG_CONFIG_NAME = "log.config"
LOG_FILE_NAME = "homeserver.log"
STDOUT_NAME = "stdout.txt"
STDERR_NAME = "stderr.txt"

LOG_FORMAT = (
    "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
)

# One log line of the `synapse_fedhealth` logger (or a child) at WARNING.
FEDHEALTH_WARNING_RE = re.compile(
    r"^\S+ \S+ - synapse_fedhealth(?:\.[\w.]+)? - \d+ - WARNING - [^-]*- (?P<message>.*)$",
    re.MULTILINE,
)
# The summary line of a network run (SPEC 2.3).
SUMMARY_RE = re.compile(
    r" - synapse_fedhealth(?:\.[\w.]+)? - \d+ - \w+ - [^-]*- (?P<summary>federation (?:OK|BROKEN)\b.*)$",
    re.MULTILINE,
)


def log_config_dict(log_file: str) -> dict[str, Any]:
    """A Python logging dictConfig for Synapse: a file and stderr, INFO,
    and DEBUG for the module's own logger."""
    return {
        "version": 1,
        "formatters": {"precise": {"format": LOG_FORMAT}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": log_file,
                "encoding": "utf8",
            },
            "console": {"class": "logging.StreamHandler", "formatter": "precise"},
        },
        "loggers": {
            # DEBUG here would log access tokens.
            "synapse.storage.SQL": {"level": "INFO"},
            "synapse_fedhealth": {"level": "DEBUG"},
        },
        "root": {"level": "INFO", "handlers": ["file", "console"]},
        "disable_existing_loggers": False,
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _loopback_http_url(config: Mapping[str, Any]) -> str | None:
    """The base URL of the first plain-HTTP listener reachable on loopback."""
    for listener in config.get("listeners") or []:
        if not isinstance(listener, Mapping) or listener.get("type", "http") != "http":
            continue
        if listener.get("tls") or "port" not in listener:
            continue
        binds = listener.get("bind_addresses") or ["::", "0.0.0.0"]
        for bind in binds:
            if bind in ("127.0.0.1", "0.0.0.0", "localhost"):
                return f"http://127.0.0.1:{int(listener['port'])}"
            if bind in ("::1", "::"):
                return f"http://[::1]:{int(listener['port'])}"
    return None


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the thread that
    started us exits, so a killed test run or demo leaves no Synapse behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@attr.s(frozen=True, slots=True, auto_attribs=True)
class StartResult:
    """How a Synapse start that was expected to fail ended."""

    returncode: int
    output: str  # stdout, stderr and the log, in that order


class SynapseError(Exception):
    """Synapse did not start, or did not stop, as expected."""


class SynapseProcess:
    """One Synapse homeserver as a child process, in its own directory.

    `config` is a homeserver config, as a dict or a YAML file. It is written to
    `<directory>/homeserver.yaml` with `log_config` pointing at a log config
    made here (INFO to `homeserver.log` and stderr). Relative paths in the
    config are relative to `directory`, where Synapse runs.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        config: Mapping[str, Any] | str | os.PathLike[str],
        *,
        base_url: str | None = None,
        health_timeout: float = HEALTH_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        if isinstance(config, Mapping):
            self.config: dict[str, Any] = copy.deepcopy(dict(config))
        else:
            with open(config, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
            if not isinstance(loaded, dict):
                raise SynapseError(f"{config} does not hold a YAML mapping")
            self.config = loaded
        url = base_url or _loopback_http_url(self.config)
        if url is None:
            raise SynapseError(
                "the config has no plain-HTTP listener on loopback to poll /health on; "
                "pass base_url"
            )
        self.base_url = url
        self.health_timeout = health_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_in_s: float | None = None

    # -- files ---------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.directory / HOMESERVER_CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE_NAME

    def write_files(self) -> Path:
        """Write the homeserver config and the log config; return the former."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log_config = self.directory / LOG_CONFIG_NAME
        log_config.write_text(
            yaml.safe_dump(log_config_dict(str(self.log_path)), sort_keys=False),
            encoding="utf-8",
        )
        config = dict(self.config)
        config["log_config"] = str(log_config)
        self.config_path.write_text(
            yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
        )
        return self.config_path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def output_text(self) -> str:
        """What the process wrote to stdout and stderr."""
        parts = []
        for name in (STDOUT_NAME, STDERR_NAME):
            try:
                parts.append(
                    (self.directory / name).read_text(
                        encoding="utf-8", errors="replace"
                    )
                )
            except FileNotFoundError:
                pass
        return "".join(parts)

    def fedhealth_warnings(self) -> list[str]:
        """The messages of the module's WARNING lines, in log order."""
        return [
            m.group("message") for m in FEDHEALTH_WARNING_RE.finditer(self.log_text())
        ]

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float
    ) -> re.Match[str] | None:
        """Poll the log until `pattern` matches (returns the match) or
        `timeout` seconds pass, or the process ends (returns None)."""
        regex = (
            re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        )
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match is not None:
                return match
            if time.monotonic() >= deadline or not self.running:
                return None
            time.sleep(POLL_INTERVAL_S)

    # -- process -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _command(self, *extra: str) -> list[str]:
        return [
            self.python,
            "-m",
            "synapse.app.homeserver",
            "-c",
            str(self.config_path),
            *extra,
        ]

    def _has_signing_key(self) -> bool:
        key_path = self.config.get("signing_key_path")
        return isinstance(key_path, str) and (self.directory / key_path).is_file()

    def generate_keys(self) -> None:
        """`--generate-keys`: make the signing key (and any missing file).
        It does not load modules, so it works for a bad module config too."""
        self.write_files()
        if self._has_signing_key():
            return
        try:
            done = subprocess.run(
                self._command("--generate-keys"),
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=GENERATE_KEYS_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise SynapseError(
                f"--generate-keys did not finish in {e.timeout} s"
            ) from None
        if done.returncode != 0:
            raise SynapseError(
                f"--generate-keys failed with exit status {done.returncode}:\n"
                + done.stdout.decode(errors="replace")
                + done.stderr.decode(errors="replace")
            )

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self.running:
            raise SynapseError("this Synapse is already running")
        self.generate_keys()
        self.log_path.unlink(missing_ok=True)
        self.returncode = None
        with (
            open(self.directory / STDOUT_NAME, "wb") as out,
            open(self.directory / STDERR_NAME, "wb") as err,
        ):
            process = subprocess.Popen(
                self._command(),
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C reaches us; we stop it in order
                preexec_fn=_die_with_parent,
            )
        self.process = process
        _LIVE.add(self)
        return process

    def start(self) -> SynapseProcess:
        """Start Synapse and wait until `/health` answers 200."""
        began = time.monotonic()
        process = self._spawn()
        deadline = began + self.health_timeout
        try:
            while True:
                if process.poll() is not None:
                    self.returncode = process.returncode
                    raise SynapseError(
                        f"Synapse exited with status {process.returncode} during start-up:\n"
                        + self.failure_output()
                    )
                if self._health_ok():
                    break
                if time.monotonic() >= deadline:
                    raise SynapseError(
                        f"Synapse did not answer {self.base_url}/health within "
                        f"{self.health_timeout:.0f} s:\n" + self.failure_output()
                    )
                time.sleep(POLL_INTERVAL_S)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        return self

    def start_expecting_failure(
        self, timeout: float = FAILED_START_TIMEOUT_S
    ) -> StartResult:
        """Start Synapse on a config that should stop it; return how it ended.

        Raises SynapseError (after stopping it) if it is still running, or
        answering /health, after `timeout` seconds.
        """
        process = self._spawn()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise SynapseError(
                f"Synapse was expected to fail at start-up but still runs after {timeout} s:\n"
                + self.failure_output()
            ) from None
        self.returncode = process.returncode
        _LIVE.discard(self)
        return StartResult(process.returncode, self.failure_output())

    def failure_output(self) -> str:
        return self.output_text() + self.log_text()

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.base_url}/health", timeout=2
            ) as response:
                return bool(response.status == 200)
        except (OSError, ValueError):
            return False

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout`. Returns the exit status."""
        process = self.process
        if process is None:
            return self.returncode
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(KILL_TIMEOUT_S)
        finally:
            _LIVE.discard(self)
        self.returncode = process.returncode
        return self.returncode

    def __enter__(self) -> SynapseProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_LIVE: set[SynapseProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        proc.stop_timeout = min(proc.stop_timeout, 5.0)
        proc.stop()


# -- HTTP (stdlib only) ------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def http_request(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    cafile: str | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> HttpResponse:
    """One request; an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = (
        ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    )
    # No proxies: every request of the demo and the tests goes to loopback.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return HttpResponse(
                response.status, dict(response.headers.items()), response.read()
            )
    except urllib.error.HTTPError as e:
        with e:
            return HttpResponse(e.code, dict(e.headers.items()), e.read())


def register_user(
    base_url: str, shared_secret: str, username: str, password: str, admin: bool
) -> str:
    """Register a user through shared-secret registration; return its access token."""
    url = base_url.rstrip("/") + "/_synapse/admin/v1/register"
    nonce_response = http_request(url)
    if nonce_response.status != 200:
        raise SynapseError(f"GET {url}: {nonce_response.status} {nonce_response.text}")
    nonce = str(nonce_response.json()["nonce"])
    mac = hmac.new(shared_secret.encode("utf8"), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode("utf8"))
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    response = http_request(
        url,
        method="POST",
        body={
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        },
    )
    if response.status != 200:
        raise SynapseError(f"POST {url}: {response.status} {response.text}")
    return str(response.json()["access_token"])


# -- a DNS server that knows no names ------------------------------------------


class NxDomainDnsServer:
    """A UDP DNS server on loopback that answers NXDOMAIN to every query.

    Pointing the module's `dns_servers` at it keeps every lookup on this
    machine, and gives a fast, definite answer instead of a timeout.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, 0))
        self._socket.settimeout(0.2)
        self.address = f"{host}:{self._socket.getsockname()[1]}"
        self.queries = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="nxdomain-dns", daemon=True
        )

    def start(self) -> NxDomainDnsServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        import dns.exception
        import dns.message
        import dns.rcode

        while not self._stopping.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.NXDOMAIN)
            self.queries += 1
            try:
                self._socket.sendto(reply.to_wire(), peer)
            except OSError:
                continue

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._socket.close()

    def __enter__(self) -> NxDomainDnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the demo ------------------------------------------------------------------

MODULE_PATH = "synapse_fedhealth.FedHealthModule"
DEFAULT_DEMO_CONFIG = "sample_homeserver.yaml"
DEFAULT_DEMO_WORKDIR = "demo-data"
SUMMARY_MARGIN_S = 30.0  # on top of startup_delay + timeout


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `demo` command to the `python -m synapse_fedhealth` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="start a throw-away Synapse with the module and show what it reports",
        description=(
            "Start Synapse on a sample config with the module, register an admin, "
            "show the module's start-up warnings and the report of "
            "GET /_synapse/fedhealth, then stop Synapse."
        ),
    )
    _add_demo_arguments(parser)
    parser.set_defaults(func=main)
    return parser


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
            "resolve with the config's dns_servers or the system's nameservers; by "
            "default the demo points the module at a local DNS stub that knows no "
            "names, so nothing leaves this machine"
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


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """`python -m synapse_fedhealth demo`. Exit status 0 when the demo worked."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="python -m synapse_fedhealth demo")
        _add_demo_arguments(parser)
        args = parser.parse_args(args)
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
    url = _loopback_http_url(config)
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


if __name__ == "__main__":
    sys.exit(main())
