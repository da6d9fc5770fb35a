"""The `check` subcommand: argument handling and the outsider's report."""

from __future__ import annotations

import argparse

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from synapse_fedhealth.check_command import (
    EXIT_USAGE,
    INSIDER_ONLY_REASON,
    add_check_parser,
    build_outside_report,
    main_check,
)
from synapse_fedhealth.net.tls import TrustStore
from synapse_fedhealth.network import NetworkSettings
from synapse_fedhealth.report import Status
from tests.unit.fakes import FakeHttp, FakeResolver, FakeTls


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_check_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["check", *argv])


def test_parser_options() -> None:
    args = parse(
        "example.com",
        "--json",
        "--timeout",
        "3",
        "--dns-server",
        "127.0.0.1:53",
        "--ca-file",
        "/x.pem",
    )
    assert args.server_name == "example.com"
    assert args.json and args.timeout == 3
    assert args.dns_server == ["127.0.0.1:53"]
    assert args.ca_file == ["/x.pem"]
    assert args.func is main_check


def test_usage_errors_exit_2() -> None:
    assert main_check(parse("example.com", "--timeout", "0")) == EXIT_USAGE
    assert (
        main_check(parse("example.com", "--dns-server", "dns.example.com"))
        == EXIT_USAGE
    )
    assert (
        main_check(parse("example.com", "--ca-file", "/nonexistent/ca.pem"))
        == EXIT_USAGE
    )


class OutsideReportTest(SynchronousTestCase):
    def test_report_skips_insider_checks_and_notes_vantage(self) -> None:
        settings = NetworkSettings(
            server_name="example.com:8448", timeout_s=5, cert_expiry_warning_days=14
        )
        d = defer.ensureDeferred(
            build_outside_report(
                MemoryReactorClock(),
                settings,
                None,
                resolver=FakeResolver({("example.com", "A"): ["203.0.113.7"]}),
                http=FakeHttp({}),
                tls_prober=FakeTls({}),
                trust=TrustStore(),
            )
        )
        report = self.successResultOf(d)
        skipped = {c.id: c for c in report.checks if c.status is Status.SKIP}
        for check_id in (
            "config",
            "federation.key_matches_local",
            "federation.signed_request",
            "federation.notary",
            "proxy.forwarded_headers",
        ):
            assert INSIDER_ONLY_REASON in skipped[check_id].summary
        assert any("outsider" in n for n in report.notes)
        assert report.federation_tester["FederationOK"] is report.federation_ok is False
