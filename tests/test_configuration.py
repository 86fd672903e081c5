"""The README's one Configuration table against the code: every flag of ``serve`` and of the
client commands is listed with its variable, and every variable the code reads is listed."""

from __future__ import annotations

import argparse
import re

import pytest

from coordinator.cli import build_parser
from tests.conftest import ROOT

CONFIGURED_COMMANDS = ("serve", "start", "status", "list", "cancel", "resume")
# Options that are not configuration: what to do, not how.
NOT_SETTINGS = {"--help", "--input", "--version", "--idempotency-key", "--wait", "--saga",
                "--status", "--limit", "--cursor"}
VARIABLE = re.compile(r"\b(?:SAGARAY|OTEL)_[A-Z_]*[A-Z]\b")


def table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")][1:]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def code_variables() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "coordinator").rglob("*.py"):
        found |= set(VARIABLE.findall(path.read_text()))
    return found - {"OTEL_PREFIX"}


def test_every_setting_flag_is_in_the_table_with_a_variable() -> None:
    rows = table()
    listed_flags = {flag for row in rows for flag in re.findall(r"--[a-z-]+", row[0])}
    parsers = subparsers()
    for command in CONFIGURED_COMMANDS:
        for action in parsers[command]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in NOT_SETTINGS:
                    assert flag in listed_flags, f"sagaray {command} {flag} is not in the table"
    for row in rows:
        if row[0] != "—":
            assert VARIABLE.search(row[1]), f"{row[0]} has no variable"


def test_the_table_lists_exactly_the_variables_the_code_reads() -> None:
    listed = {name for row in table() for name in VARIABLE.findall(row[1])}
    assert code_variables() == listed


def test_the_documented_defaults_are_the_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {row[1].split("`")[1]: row[2] for row in table() if row[1].startswith("`SAGARAY")}
    defaults = {"SAGARAY_HOST": "host", "SAGARAY_PORT": "port", "SAGARAY_SAGAS": "sagas",
                "SAGARAY_SERVICES": "services", "SAGARAY_JOURNAL": "journal",
                "SAGARAY_NAMESPACE": "namespace", "SAGARAY_LEASE_SECONDS": "lease_seconds",
                "SAGARAY_MAX_IN_FLIGHT": "max_in_flight",
                "SAGARAY_MAX_IN_FLIGHT_PER_HOST": "max_in_flight_per_host"}
    for variable in rows:
        monkeypatch.delenv(variable, raising=False)
    args = build_parser().parse_args(["serve"])
    for variable, dest in defaults.items():
        assert rows[variable] == f"`{getattr(args, dest)}`".replace("`10.0`", "`10`"), variable
    assert args.hosts is None and args.api_tokens is None and args.insecure is False
