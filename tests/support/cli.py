"""What a CLI run returned, and the one-line-error rule every failing run must follow."""

from __future__ import annotations


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:  # shown by pytest on failure
        return f"CliResult(exit={self.exit_code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result
    assert "Traceback" not in result.stdout + result.stderr, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
