"""Helpers for tests of the command line's errors: one line on stderr, exit status 2, nothing lost."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sdi.cli.main import main


def error_line(capsys, argv: list[str]) -> str:
    """Run ``sdi argv`` in-process: it must return 2 (no exception escapes, so no traceback) with exactly one line
    on stderr, ``sdi CMD: error: ...``, which is returned."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    prog = "sdi" if not argv or argv[0].startswith("-") else f"sdi {argv[0]}"
    assert lines[0].startswith(f"{prog}: error: ") or lines[0].startswith("sdi: error: "), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
