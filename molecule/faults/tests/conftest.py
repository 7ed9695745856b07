"""The fault matrix's table at the end of the verifier's output, whatever passed or failed (docs/fault-matrix.md)."""

from __future__ import annotations

from matrix import ROWS, TABLE, render, save  # pylint: disable=import-error


def pytest_terminal_summary(terminalreporter) -> None:
    if not ROWS:
        return
    save(ROWS)
    terminalreporter.section("fault matrix (%s)" % TABLE)
    terminalreporter.write(render(ROWS))
