"""`python -m synapse_fedhealth lint -c homeserver.yaml [-c conf.d/]`.

Runs the config checks offline, like `nginx -t`: exit 0 when nothing is worse
than warn, 1 on a fail, 2 when the config can't be read or used (not YAML, not
a mapping, a malformed `modules:` list).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from synapse_fedhealth.report import Report, Status

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_UNREADABLE = 2


def add_lint_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lint",
        help="check a homeserver.yaml offline, without starting Synapse",
        description="Run the config checks on homeserver.yaml (and conf.d "
        "directories) without starting Synapse.",
    )
    parser.add_argument(
        "-c",
        "--config-path",
        action="append",
        required=True,
        metavar="FILE",
        help="a config file or a directory of *.yaml files; repeat as for Synapse",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=main_lint)


def _read_config(paths: list[str]) -> tuple[dict[str, Any], list[str]]:
    from synapse.config._base import find_config_files, read_config_files

    for path in paths:
        if not os.path.exists(path):
            raise OSError(f"{path}: no such file or directory")
    files = find_config_files(paths)
    if not files:
        raise OSError("no config files found in " + ", ".join(paths))
    raw = read_config_files(files)
    if not isinstance(raw, dict):
        raise ValueError("the config is not a YAML mapping")
    return raw, files


# Config keys holding a path that Synapse opens relative to its working
# directory (synapse/config/_base.py: Config.abspath, read_file).
PATH_KEYS = (
    "signing_key_path",
    "tls_certificate_path",
    "tls_private_key_path",
    "log_config",
    "media_store_path",
)
RELATIVE_PATHS_NOTE = (
    "relative paths ({keys}) are taken from the current directory, {cwd}, as "
    "Synapse takes them from the directory it is started in: run lint there"
)


def _notes(raw: dict[str, Any]) -> tuple[str, ...]:
    notes = [
        "lint checks the config files only; the module's network checks "
        "show whether remote servers can reach this server"
    ]
    relative = [
        key
        for key in PATH_KEYS
        if isinstance(raw.get(key), str) and not os.path.isabs(raw[key])
    ]
    if relative:
        notes.append(
            RELATIVE_PATHS_NOTE.format(keys=", ".join(relative), cwd=os.getcwd())
        )
    return tuple(notes)


def main_lint(args: argparse.Namespace) -> int:
    from synapse_fedhealth.checks.config_lint import LintSettings, lint_config
    from synapse_fedhealth.config import (
        FedHealthConfigError,
        parse_fedhealth_config,
    )
    from synapse_fedhealth.homeserver import module_entry_config, snapshot_from_raw
    from synapse_fedhealth.render.text import render_for_terminal

    started = time.time()
    try:
        raw, files = _read_config(args.config_path)
        snapshot = snapshot_from_raw(raw, files)
    except Exception as e:  # unreadable, not YAML, not a homeserver config
        print(f"synapse_fedhealth lint: cannot read the config: {e}", file=sys.stderr)
        return EXIT_UNREADABLE

    try:
        module_config = module_entry_config(raw)
    except ValueError as e:  # a malformed `modules:` that Synapse can't load either
        print(f"synapse_fedhealth lint: cannot use the config: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        settings = parse_fedhealth_config(module_config)
    except FedHealthConfigError as e:
        print(
            f"synapse_fedhealth lint: modules.synapse_fedhealth.config.{e.key}: "
            f"{e.message}",
            file=sys.stderr,
        )
        return EXIT_FAIL
    checks = lint_config(
        snapshot,
        LintSettings(
            cert_expiry_warning_days=settings.cert_expiry_warning_days,
            tls_ca_file=settings.tls_ca_file,
            now=time.time(),
        ),
    )
    finished = time.time()
    report = Report.build(
        server_name=snapshot.server_name,
        checks=checks,
        federation_disabled=snapshot.federation_disabled,
        generated_at=int(finished * 1000),
        duration_ms=int((finished - started) * 1000),
        vantage="offline config check",
        notes=_notes(raw),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(render_for_terminal(report, sys.stdout))
    worst = max((c.status.severity for c in checks), default=0)
    return EXIT_FAIL if worst >= Status.FAIL.severity else EXIT_OK
