"""Helpers shared by the CLI tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path


def run_cli(cli_main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a command's ``cli_main`` in this process; argparse's exits arrive as SystemExit."""
    try:
        return cli_main(argv)
    except SystemExit as stop:
        return int(stop.code)


def file_digests(folder: Path) -> dict[str, str]:
    """Return the SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
