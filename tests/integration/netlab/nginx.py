"""nginx (the Debian binary) as a plain child process, as the reverse proxy
in front of a Synapse under test.

    nginx = Nginx(tmp_path / "nginx", [
        Vhost(address="127.90.1.2", port=443, server_names=("example.test",),
              cert=cert_files,                               # netlab.certs.CertFiles
              well_known_server=WellKnown({"m.server": "example.test:443"}),
              proxy=ProxyVariant.CORRECT, upstream="http://127.0.0.1:8008"),
    ])
    nginx.start()              # returns when every vhost accepts connections
    nginx.vhosts[0] = attr.evolve(nginx.vhosts[0], proxy=ProxyVariant.URI_REWRITE)
    nginx.reload()             # SIGHUP; returns when the new config serves
    nginx.stop()

It runs with `daemon off; master_process on;` (one worker) in its own
process group: `stop()` sends SIGQUIT to the master, then SIGKILL to the
group, so no worker is left behind. The master runs under
`setpriv --pdeathsig KILL`, so it dies with the test process even if that is
killed (a worker would then linger until its connections close; atexit and
fixture teardown cover every normal exit). All paths (pid, logs, temp dirs)
live inside the prefix.

(`master_process off` was tried first: nginx 1.22 then spins after a SIGHUP,
logging "512 worker_connections are not enough, reusing connections" and
never serving the new config.)

A reload is confirmed through a control listener on 127.0.0.1 that answers
the config generation: `reload()` returns once the new generation answers.

`Nginx(prefix, vhosts, netns=ns)` runs it inside a network namespace
(`ip netns exec`, which execs: the master keeps its PID and process group);
the control listener is then on the namespace's address, which the host
reaches over the veth pair.
"""

from __future__ import annotations

import atexit
import enum
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attr

from . import leftovers
from .certs import CertFiles
from .loopback import free_port, host_port
from .netns import Netns

NGINX_BINARY = shutil.which("nginx") or "/usr/sbin/nginx"
# A unix socket path that doesn't exist (and is short: sun_path holds 107
# bytes): proxying to it fails at once with 502.
NO_UPSTREAM_SOCKET = "/nonexistent/netlab-upstream-down.sock"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.02
CONTROL_PATH = "/__netlab/generation"
# nginx's own default 404 page, for the paths a vhost doesn't route.


class ProxyVariant(str, enum.Enum):
    """How a vhost forwards `/_matrix` and `/_synapse/client` to Synapse."""

    CORRECT = "correct"  # proxy_pass without a URI, with X-Forwarded-* and Host
    URI_REWRITE = (
        "uri_rewrite"  # `location /_matrix/ { proxy_pass http://up/_matrix/; }`
    )
    NO_FORWARDED_HEADERS = "no_forwarded_headers"  # proxy_pass alone
    UPSTREAM_DOWN = "upstream_down"  # proxies to a unix socket nobody listens on: 502
    NOT_FEDERATION = "not_federation"  # proxies the client API only; /_matrix/federation and /_matrix/key are 404
    NONE = "none"  # no proxying at all: everything but the well-knowns is 404


@attr.s(frozen=True, slots=True, auto_attribs=True)
class WellKnown:
    """What a vhost serves at a `/.well-known/matrix/...` path.

    `body`: a dict/list (sent as JSON) or str/bytes (sent as is).
    `redirect`: when set, answer `status` (default 301 if status is 200)
    with `Location: redirect` instead of a body.
    """

    body: Any = None
    status: int = 200
    content_type: str = "application/json"
    redirect: str | None = None
    headers: Mapping[str, str] = attr.Factory(dict)  # extra response headers

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Vhost:
    """One `server {}` block."""

    address: str  # the IP to listen on (loopback, or inside a netns)
    port: int = 443
    server_names: tuple[str, ...] = ("_",)
    cert: CertFiles | None = None  # None: plain HTTP
    well_known_server: WellKnown | None = None  # None: 404
    well_known_client: WellKnown | None = None  # None: 404
    proxy: ProxyVariant = ProxyVariant.CORRECT
    upstream: str = "http://127.0.0.1:8008"  # scheme://host:port, no path
    ssl_protocols: str = "TLSv1.2 TLSv1.3"
    default_server: bool = True
    extra: str = ""  # raw directives appended inside the server block

    @property
    def listen(self) -> str:
        return host_port(self.address, self.port)


def _nginx_string(value: str) -> str:
    """A double-quoted nginx string. `$` can't be escaped in nginx strings,
    so it is spelled through the `$netlab_dollar` variable."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${netlab_dollar}")
    )
    return f'"{escaped}"'


class Nginx:
    """See the module docstring. `prefix` is created; files are rewritten on
    every start/reload."""

    def __init__(
        self,
        prefix: str | Path,
        vhosts: Iterable[Vhost] = (),
        *,
        binary: str = NGINX_BINARY,
        pdeathsig: bool = True,
        netns: Netns | None = None,
    ) -> None:
        self.prefix = Path(prefix).absolute()
        self.vhosts: list[Vhost] = list(vhosts)
        self.binary = binary
        self.pdeathsig = pdeathsig and shutil.which("setpriv") is not None
        self.netns = netns
        self.process: subprocess.Popen[bytes] | None = None
        # In a fresh namespace every port is free; a free one on the host's
        # loopback is as good a pick as any.
        self.control_host = netns.ns_ip if netns is not None else "127.0.0.1"
        self.control_port = free_port("127.0.0.1")
        self.generation = 0
        self.started_in_s: float | None = None
        self.reloaded_in_s: float | None = None
        self._record: Path | None = None

    # -- files ---------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def connection_log(self) -> Path:
        """One JSON line per request with the connection it came on (nginx's
        `$connection` serial and `$connection_requests`), the address and
        SNI it came to, and the request: what benchmarks/performance.py
        replays."""
        return self.prefix / "logs" / "connections.log"

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_log_text(self) -> str:
        try:
            return self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connection_log_text(self) -> str:
        try:
            return self.connection_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_well_known(self, vhost_index: int, kind: str, wk: WellKnown) -> Path:
        path = self.prefix / "html" / f"v{vhost_index}-g{self.generation}-{kind}"
        path.write_bytes(wk.body_bytes())
        return path

    def _well_known_location(self, index: int, kind: str, wk: WellKnown | None) -> str:
        location = f"location = /.well-known/matrix/{kind}"
        if wk is None:
            return f"{location} {{ return 404; }}\n"
        lines = [f"{location} {{"]
        for name, value in wk.headers.items():
            lines.append(
                f"    add_header {_nginx_string(name)} {_nginx_string(value)} always;"
            )
        if wk.redirect is not None:
            status = wk.status if wk.status != 200 else 301
            lines.append(f"    return {status} {_nginx_string(wk.redirect)};")
        elif wk.status == 200:
            path = self._write_well_known(index, kind, wk)
            lines.append("    types { }")
            lines.append(f"    default_type {_nginx_string(wk.content_type)};")
            lines.append(f"    alias {path};")
        else:
            # A body with another status: `return` with text.
            lines.append("    types { }")
            lines.append(f"    default_type {_nginx_string(wk.content_type)};")
            lines.append(
                f"    return {wk.status} {_nginx_string(wk.body_bytes().decode('utf-8', 'replace'))};"
            )
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _proxy_locations(self, vhost: Vhost) -> str:
        upstream = vhost.upstream.rstrip("/")
        headers = (
            "    proxy_set_header X-Forwarded-For $remote_addr;\n"
            "    proxy_set_header X-Forwarded-Proto $scheme;\n"
            "    proxy_set_header Host $host;\n"
        )
        common = "    client_max_body_size 50M;\n    proxy_http_version 1.1;\n"
        v = vhost.proxy
        if v is ProxyVariant.NONE:
            return ""
        if v is ProxyVariant.CORRECT:
            block = f"    proxy_pass {upstream};\n{headers}{common}"
            return "".join(
                f"location {p} {{\n{block}}}\n"
                for p in ("/_matrix", "/_synapse/client")
            )
        if v is ProxyVariant.URI_REWRITE:
            return (
                f"location /_matrix/ {{\n    proxy_pass {upstream}/_matrix/;\n{headers}{common}}}\n"
                f"location /_synapse/client/ {{\n    proxy_pass {upstream}/_synapse/client/;\n{headers}{common}}}\n"
            )
        if v is ProxyVariant.NO_FORWARDED_HEADERS:
            block = f"    proxy_pass {upstream};\n{common}"
            return "".join(
                f"location {p} {{\n{block}}}\n"
                for p in ("/_matrix", "/_synapse/client")
            )
        if v is ProxyVariant.UPSTREAM_DOWN:
            block = (
                f"    proxy_pass http://unix:{NO_UPSTREAM_SOCKET};\n{headers}{common}"
            )
            return "".join(
                f"location {p} {{\n{block}}}\n"
                for p in ("/_matrix", "/_synapse/client")
            )
        if v is ProxyVariant.NOT_FEDERATION:
            block = f"    proxy_pass {upstream};\n{headers}{common}"
            return "".join(
                f"location {p} {{\n{block}}}\n"
                for p in ("/_matrix/client", "/_synapse/client")
            )
        raise ValueError(f"unknown proxy variant {v!r}")

    def _server_block(self, index: int, vhost: Vhost) -> str:
        listen = vhost.listen
        if vhost.cert is not None:
            listen += " ssl"
        if vhost.default_server:
            listen += " default_server"
        parts = [
            "server {",
            f"  listen {listen};",
            f"  server_name {' '.join(vhost.server_names)};",
        ]
        if vhost.cert is not None:
            parts += [
                f"  ssl_certificate {vhost.cert.served_chain};",
                f"  ssl_certificate_key {vhost.cert.key};",
                f"  ssl_protocols {vhost.ssl_protocols};",
            ]
        parts.append(
            self._well_known_location(index, "server", vhost.well_known_server)
        )
        parts.append(
            self._well_known_location(index, "client", vhost.well_known_client)
        )
        parts.append(self._proxy_locations(vhost))
        parts.append("location / { return 404; }")
        if vhost.extra:
            parts.append(vhost.extra)
        parts.append("}")
        return "\n".join(parts)

    def render(self) -> str:
        p = self.prefix
        # Several vhosts on one address:port may each ask for default_server;
        # only the first one may have it.
        seen: set[str] = set()
        blocks = []
        for i, vhost in enumerate(self.vhosts):
            if vhost.default_server:
                if vhost.listen in seen:
                    vhost = attr.evolve(vhost, default_server=False)
                seen.add(vhost.listen)
            blocks.append(self._server_block(i, vhost))
        # As root, workers would run as `nobody` and could not read files in
        # pytest's 0700 temp directories.
        user = "user root root;" if os.geteuid() == 0 else ""
        return f"""# written by tests/integration/netlab/nginx.py (generation {self.generation})
{user}
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout 2s;
pid {p}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 512; }}
http {{
  access_log {self.access_log};
  log_format netlab_connections escape=json '{{"connection": $connection, '
    '"request": $connection_requests, "address": "$server_addr", '
    '"port": $server_port, "sni": "$ssl_server_name", "host": "$host", '
    '"method": "$request_method", "uri": "$request_uri", "status": $status, '
    '"origin": "$http_origin", "authorization": "$http_authorization"}}';
  access_log {self.connection_log} netlab_connections;
  client_body_temp_path {p}/tmp/client_body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  default_type application/octet-stream;
  server_tokens on;
  proxy_connect_timeout 5s;
  proxy_read_timeout 30s;
  geo $netlab_dollar {{ default "$"; }}
  server {{
    listen {host_port(self.control_host, self.control_port)};
    location = {CONTROL_PATH} {{ return 200 "{self.generation}"; }}
    location / {{ return 404; }}
  }}
{chr(10).join(blocks)}
}}
"""

    def write_config(self) -> Path:
        for sub in ("logs", "tmp", "html"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        return self.conf_path

    def _base_command(self) -> list[str]:
        command = [
            self.binary,
            "-p", str(self.prefix),
            "-e", str(self.error_log),
            "-c", str(self.conf_path),
        ]  # fmt: skip
        return command if self.netns is None else self.netns.exec_command(command)

    def test_config(self) -> None:
        """`nginx -t`; raises NginxError with nginx's message."""
        done = subprocess.run(
            [*self._base_command(), "-t", "-q"],
            capture_output=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise NginxError(
                "nginx -t failed:\n"
                + done.stderr.decode(errors="replace")
                + "\n--- config ---\n"
                + self.conf_path.read_text()
            )

    # -- process -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> Nginx:
        if self.running:
            raise NginxError("nginx is already running")
        began = time.monotonic()
        self.generation += 1
        self.write_config()
        self.test_config()
        command = self._base_command()
        if self.pdeathsig:
            command = ["setpriv", "--pdeathsig", "KILL", "--", *command]
        with open(self.prefix / "logs" / "stderr.log", "ab") as err:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        _LIVE.add(self)
        self._record = leftovers.record("nginx", pgid=self.process.pid)
        try:
            self._wait_ready(self.generation, began + timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        return self

    def reload(self, timeout: float = START_TIMEOUT_S) -> None:
        """Apply the current `vhosts` with SIGHUP; returns once nginx serves
        the new config. Starts nginx if it isn't running."""
        if not self.running:
            self.start(timeout)
            return
        began = time.monotonic()
        self.generation += 1
        self.write_config()
        self.test_config()
        assert self.process is not None
        old_workers = _children(self.process.pid)
        self.process.send_signal(signal.SIGHUP)
        self._wait_ready(self.generation, began + timeout)
        # Until the old workers are gone they may still accept a connection
        # and answer it with the old config (worker_shutdown_timeout bounds it).
        deadline = began + timeout
        while old_workers and time.monotonic() < deadline:
            old_workers = [pid for pid in old_workers if _alive(pid)]
            time.sleep(POLL_S)
        if old_workers:
            raise NginxError(
                f"old nginx workers {old_workers} did not exit after reload"
            )
        self.reloaded_in_s = time.monotonic() - began

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        self.stop()
        self.start(timeout)

    def set_vhosts(self, vhosts: Iterable[Vhost], *, reload: bool = True) -> None:
        self.vhosts = list(vhosts)
        if reload and self.running:
            self.reload()

    def _generation_served(self) -> int | None:
        url = f"http://{host_port(self.control_host, self.control_port)}{CONTROL_PATH}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=1) as response:
                return int(response.read().decode())
        except (OSError, ValueError):
            return None

    def _wait_ready(self, generation: int, deadline: float) -> None:
        pending = {(v.address, v.port) for v in self.vhosts}
        while True:
            if not self.running:
                raise NginxError(
                    f"nginx exited with status {self.process.returncode if self.process else None}:\n"
                    + self.error_log_text()[-4000:]
                )
            if self._generation_served() == generation:
                pending = {a for a in pending if not _accepts(*a)}
                if not pending:
                    return
            if time.monotonic() >= deadline:
                raise NginxError(
                    f"nginx did not serve generation {generation} "
                    f"(still closed: {sorted(pending)}):\n"
                    + self.error_log_text()[-4000:]
                )
            time.sleep(POLL_S)

    def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT)  # graceful
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT_S)
        finally:
            # Workers of a master that died abruptly: the group is the master's
            # PID (start_new_session), which was ours.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
            _LIVE.discard(self)
            leftovers.forget(self._record)
            self._record = None
        return process.returncode

    def __enter__(self) -> Nginx:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NginxError(Exception):
    pass


def _accepts(ip: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((ip, port))
        except OSError:
            return False
        return True


def _children(pid: int) -> list[int]:
    """The PIDs of `pid`'s child processes (nginx's workers), from /proc."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


_LIVE: set[Nginx] = set()


@atexit.register
def _stop_leftovers() -> None:
    for nginx in list(_LIVE):
        nginx.stop()


def nginx_available(binary: str = NGINX_BINARY) -> bool:
    return os.access(binary, os.X_OK)


def well_known_server(m_server: str, **kwargs: Any) -> WellKnown:
    """`{"m.server": m_server}` as a WellKnown."""
    return WellKnown({"m.server": m_server}, **kwargs)


def vhosts_on(address: str, ports: Sequence[int], **kwargs: Any) -> list[Vhost]:
    """The same vhost on several ports of one address (e.g. 443 and 8448)."""
    return [Vhost(address=address, port=p, **kwargs) for p in ports]
