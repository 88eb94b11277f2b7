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
