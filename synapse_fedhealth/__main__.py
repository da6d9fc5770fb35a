"""Command line: `python -m synapse_fedhealth {check,lint} ...`.

Each subcommand's module is imported only when it exists and is asked for, so
`check` never pays for importing Synapse.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from synapse_fedhealth._version import __version__

EXIT_USAGE = 2

# (module, function adding the subparser)
_SUBCOMMANDS = (
    ("synapse_fedhealth.check_command", "add_check_parser"),
    ("synapse_fedhealth.lint_command", "add_lint_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synapse_fedhealth",
        description="Federation health checks for Synapse.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, adder in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        getattr(module, adder)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    result: int = func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
