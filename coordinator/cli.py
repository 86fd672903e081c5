"""The ``sagaray`` command line: one entry in :data:`COMMANDS` per subcommand.

A subcommand is a name, a help line, a function adding its arguments and a
function running it and returning the exit code (0 success, 1 failure, 2 usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator import __version__
from coordinator.core.definition import SagaDefinition
from coordinator.loader import DefinitionError, Registry, load_registry

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_SAGAS_DIR = "sagas"
DEFAULT_SERVICES_FILE = "services.yaml"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sagas_dir", nargs="?", metavar="DIR",
                        default=os.environ.get("SAGARAY_SAGAS", DEFAULT_SAGAS_DIR),
                        help=f"directory of saga files (default: $SAGARAY_SAGAS or "
                             f"{DEFAULT_SAGAS_DIR})")
    add_services_argument(parser)


def add_services_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--services", metavar="FILE",
                        default=os.environ.get("SAGARAY_SERVICES", DEFAULT_SERVICES_FILE),
                        help=f"services file (default: $SAGARAY_SERVICES or "
                             f"{DEFAULT_SERVICES_FILE})")


def _run_validate(args: argparse.Namespace) -> int:
    sagas_dir = Path(args.sagas_dir)
    try:
        registry = load_registry(sagas_dir, Path(args.services))
    except DefinitionError as error:
        for problem in error.problems:
            print(problem)
        count = len(error.problems)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return EXIT_FAILED
    if not registry.all():
        print(f"{sagas_dir}: no saga files (*.yaml, *.yml) found", file=sys.stderr)
        return EXIT_FAILED
    for definition in registry.all():
        print(summary(definition, registry))
    return EXIT_OK


def summary(definition: SagaDefinition, registry: Registry | None = None) -> str:
    """One line describing a saga, as ``sagaray validate`` prints it."""
    pivot = definition.graph.pivot
    count = len(definition.steps)
    line = (f"{definition.name} v{definition.version}: {count} step{'s' if count != 1 else ''}, "
            + (f"pivot {pivot}" if pivot else "no pivot"))
    source = registry.source(definition) if registry else None
    return f"{line} ({source})" if source else line


COMMANDS: list[Command] = [
    Command("validate", "check saga files and the services file; print every problem",
            _validate_arguments, _run_validate),
]


def all_commands() -> list[Command]:
    # Imported late: the runtime commands pull in Ray and aiohttp, validate does not.
    from coordinator.client_cli import CLIENT_COMMANDS

    return [*COMMANDS, *CLIENT_COMMANDS]


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagaray",
                                     description="Saga coordinator for services on Ray.")
    parser.add_argument("--version", action="version", version=f"sagaray {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in all_commands() if commands is None else commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help, --version and usage errors; tests call main() directly.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = args.run(args)
    return code


__all__ = ["COMMANDS", "Command", "build_parser", "main", "summary"]
