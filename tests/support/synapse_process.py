"""A real Synapse as a child process, for the demo, the integration tests
and the start-up benchmark: start, wait for /health, read its log, stop; plain
HTTP requests to it; admin registration through the shared secret.

Nothing here imports Synapse: Synapse always runs as a child process
(`python -m synapse.app.homeserver`), never daemonized, and every wait is
bounded. A started process is stopped by `stop()`, by leaving the `with`
block, or at interpreter exit at the latest.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
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
    r"^\S+ \S+ - synapse_fedhealth(?:\.[\w.]+)? - \d+ - WARNING - \S* - (?P<message>.*)$",
    re.MULTILINE,
)
# The summary line of a network run (SPEC 2.3).
SUMMARY_RE = re.compile(
    r" - synapse_fedhealth(?:\.[\w.]+)? - \d+ - \w+ - \S* - (?P<summary>federation (?:OK|BROKEN)\b.*)$",
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


def loopback_http_url(config: Mapping[str, Any]) -> str | None:
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


def die_with_parent() -> None:
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
        url = base_url or loopback_http_url(self.config)
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
                preexec_fn=die_with_parent,
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
