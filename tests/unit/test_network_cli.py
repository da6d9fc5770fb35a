"""The `check` subcommand: argument handling and the outsider's report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import trustme
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
from synapse_fedhealth.report import Status
from synapse_fedhealth.settings import RunSettings
from tests.unit.engine_helpers import fake_io
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


class _ValidationPassed(Exception):
    """Raised where main_check builds its settings: the arguments were accepted."""


@pytest.fixture
def stop_after_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    import synapse_fedhealth.settings

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _ValidationPassed

    monkeypatch.setattr(synapse_fedhealth.settings, "RunSettings", refuse)


@pytest.mark.usefixtures("stop_after_validation")
@pytest.mark.parametrize(
    ("server_name", "problem"),
    [
        ("not a name", "the host may contain only"),
        ("example.com:99999", "port"),
        ("[::1", "mismatched"),
        ("", "empty"),
    ],
)
def test_bad_server_name_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], server_name: str, problem: str
) -> None:
    assert main_check(parse(server_name)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: " in err and problem in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.usefixtures("stop_after_validation")
def test_good_arguments_pass_validation(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(trustme.CA().cert_pem.bytes())
    with pytest.raises(_ValidationPassed):
        main_check(parse("example.com:8448", "--ca-file", str(ca)))
    with pytest.raises(_ValidationPassed):
        main_check(parse("[::1]:8448"))


@pytest.mark.usefixtures("stop_after_validation")
def test_endless_ca_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # /dev/zero never ends: the check must not read it forever.
    assert main_check(parse("example.com", "--ca-file", "/dev/zero")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "/dev/zero" in err and "1 MiB" in err, err


@pytest.mark.usefixtures("stop_after_validation")
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    ],
)
def test_ca_file_without_a_pem_certificate_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    assert main_check(parse("example.com", "--ca-file", str(bad))) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(bad) in err and "PEM certificate" in err, err


@pytest.mark.usefixtures("stop_after_validation")
def test_ca_file_over_1_mib_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(trustme.CA().cert_pem.bytes() + b"#" * (1024 * 1024))
    assert main_check(parse("example.com", "--ca-file", str(big))) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(big) in err and "larger than 1 MiB" in err, err


class OutsideReportTest(SynchronousTestCase):
    def test_report_skips_insider_checks_and_notes_vantage(self) -> None:
        settings = RunSettings(
            server_name="example.com:8448", timeout_s=5, cert_expiry_warning_days=14
        )
        reactor = MemoryReactorClock()
        io = fake_io(
            reactor,
            resolver=FakeResolver({("example.com", "A"): ["203.0.113.7"]}),
            http=FakeHttp({}),
            tls=FakeTls({}),
        )
        d = defer.ensureDeferred(build_outside_report(reactor, settings, io))
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
        # An outsider can fetch the client well-known, so the command does.
        (client,) = [c for c in report.checks if c.id == "client.well_known"]
        assert client.status is not Status.SKIP
