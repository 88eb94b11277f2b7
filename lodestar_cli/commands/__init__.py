"""Command groups beyond the core ones in lodestar_cli/main.py, one module each.

A module here defines `register(commands, common)`: `commands` is the top-level subparsers object, `common`
the parent parser carrying the global options (--json, --timeout). Each command sets `handler=` to a function
taking a `lodestar_cli.main.Context` and returning an exit code. Modules are discovered automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any


def register_all(commands: Any, common: argparse.ArgumentParser) -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}").register(commands, common)


def group(commands: Any, common: argparse.ArgumentParser, name: str, help: str) -> Any:
    """The subcommands of the top-level group `name`: created here, or the ones another module already made
    (`lodestar import customers` lives in imports.py, `lodestar import history` in models.py)."""
    parser = commands.choices.get(name)
    if parser is None:
        parser = commands.add_parser(name, parents=[common], help=help)
    for action in parser._actions:  # argparse keeps the subparsers action only here
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
