"""The ``mallops`` command's entry point.

``mallops serve <service>`` (what compose, ``mallops dev`` and the tests start) goes straight to the
service's ``main`` without loading the operator CLI (Typer, Rich, the HTTP client): every process of a
service, a prefork worker's pool children included, is about 8 MB smaller and starts faster. Everything
else, ``serve --help`` and unknown services included, goes to :mod:`mallops.cli`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "serve" and not args[1].startswith("-"):
        from mallops.services import SERVICE_NAMES

        if args[1] in SERVICE_NAMES:
            try:
                module = importlib.import_module(f"services.{args[1]}.main")
            except ModuleNotFoundError:
                module = None  # not in this installation: the CLI says so with its usual exit code
            if module is not None:
                try:
                    module.main(args[2:])
                except KeyboardInterrupt:
                    sys.exit(130)
                sys.exit(0)
    from mallops.cli import main as cli_main

    cli_main()
