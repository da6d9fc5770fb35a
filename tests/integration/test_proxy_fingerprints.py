"""The proxy fingerprints against the real servers: nginx, Apache httpd and
Caddy from Debian, each run as a plain process on loopback (plain HTTP on a
free port, no service, no root), answering a 404 of their own and a 502 for
a dead upstream, as a public path does when Synapse isn't behind it.

Traefik is not packaged in Debian 12: its fingerprint comes from its
source (see synapse_fedhealth/checks/proxy_detect.py) and is unit-tested.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from synapse_fedhealth.checks.proxy_detect import detect_proxy

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_port() -> int:
    return free_port()  # nothing listens there once the socket is closed


def _nginx(directory: Path, port: int, upstream: int) -> list[str]:
    (directory / "logs").mkdir()
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log;
daemon off;
events {{}}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /_matrix/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
        location / {{ return 404; }}
    }}
}}
"""
    )
    return [
        "nginx",
        "-p",
        str(directory),
        "-e",
        str(directory / "logs/error.log"),
        "-c",
        str(conf),
    ]


def _apache(directory: Path, port: int, upstream: int) -> list[str]:
    modules = "/usr/lib/apache2/modules"
    conf = directory / "httpd.conf"
    conf.write_text(
        f"""
ServerRoot {directory}
ServerName example.test
PidFile {directory}/httpd.pid
ErrorLog {directory}/error.log
Listen 127.0.0.1:{port}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
DocumentRoot {directory}
ServerSignature On
ProxyPass /_matrix/ http://127.0.0.1:{upstream}/_matrix/
"""
    )
    return ["apache2", "-f", str(conf), "-DFOREGROUND"]


def _caddy(directory: Path, port: int, upstream: int) -> list[str]:
    conf = directory / "Caddyfile"
    conf.write_text(
        f"""
{{
    admin off
    auto_https off
    storage file_system {directory}/data
}}
http://127.0.0.1:{port} {{
    handle /_matrix/* {{
        reverse_proxy 127.0.0.1:{upstream}
    }}
    handle {{
        respond 404
    }}
}}
"""
    )
    return ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]


SERVERS: dict[str, tuple[str, Callable[[Path, int, int], list[str]]]] = {
    "nginx": ("nginx", _nginx),
    "apache": ("apache2", _apache),
    "caddy": ("caddy", _caddy),
}


def _program(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
        None,
    )


def get(url: str) -> tuple[int, dict[str, tuple[str, ...]], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = response
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        answer, status, body = e, e.code, e.read()
    headers: dict[str, tuple[str, ...]] = {}
    for key, value in answer.headers.items():
        headers[key.lower()] = (*headers.get(key.lower(), ()), value)
    return status, headers, body


@pytest.fixture(params=sorted(SERVERS))
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    name = request.param
    program, make = SERVERS[name]
    path = _program(program)
    if path is None:
        pytest.skip(f"{program} is not installed (.ci/lib.sh installs it)")
    port = free_port()
    argv = make(tmp_path, port, dead_port())
    argv[0] = path
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    pytest.fail(f"{name} did not start: {err[-2000:]}")
                time.sleep(0.05)
        yield name, port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_own_404_and_502_identify_the_proxy(proxy: tuple[str, int]) -> None:
    name, port = proxy
    # A refused upstream: 502 from nginx and Caddy, 503 from Apache.
    for path, statuses in (
        ("/nothing-here", (404,)),
        ("/_matrix/federation/v1/version", (502, 503)),
    ):
        got, headers, body = get(f"http://127.0.0.1:{port}{path}")
        assert got in statuses, (name, path, got, headers, body[:200])
        guess = detect_proxy(headers, body)
        assert guess is not None and guess.name == name, (path, headers, body[:300])
        # Also from the page alone, where the page has a mark of its own.
        if name in ("nginx", "apache"):
            without_server = {k: v for k, v in headers.items() if k != "server"}
            page_guess = detect_proxy(without_server, body)
            assert page_guess is not None and page_guess.name == name, body[:300]
