"""The one table of exit codes: ``ExitCode`` in onnxshrink/errors.py, the README's table, and no literal
exit code anywhere else in the package. The CLI paths themselves are checked where they are tested
(test_cli.py, test_failed_runs.py, test_bad_input.py, test_tune.py: ``result.exit_code is ExitCode.X``)."""

from __future__ import annotations

import ast
import re

import pytest

import onnxshrink.run.shrink as shrink_module
from onnxshrink.errors import ExitCode, InternalError, InvalidModelError, OnnxShrinkError, PluginError, UsageError
from tests.support.files import ROOT

PACKAGE = ROOT / "onnxshrink"
CODES = {0, 1, 2, 3, 130}


def test_exit_code_values_are_the_documented_ones():
    expected = {"OK": 0, "GATE_FAILED": 1, "USAGE": 2, "FAILURE": 3, "INTERRUPTED": 130}
    assert {code.name: int(code) for code in ExitCode} == expected


@pytest.mark.parametrize(
    "error, code",
    [
        (OnnxShrinkError("x"), ExitCode.FAILURE),
        (UsageError("x"), ExitCode.USAGE),
        (InvalidModelError("x"), ExitCode.USAGE),
        (PluginError("p", "x"), ExitCode.FAILURE),
        (InternalError("x"), ExitCode.FAILURE),
    ],
)
def test_errors_carry_their_exit_code(error, code):
    assert error.exit_code is code


def test_the_readme_table_is_the_enum():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", section, flags=re.MULTILINE)
    assert [(int(value), name) for value, name in rows] == [(int(code), code.name) for code in ExitCode]


def test_the_main_help_names_every_exit_code(cli):
    result = cli("--help")
    listed = re.findall(r"\b(\d+) [a-z]", " ".join(result.stdout.split("Exit codes:", 1)[1].split()))
    assert [int(value) for value in listed] == [int(code) for code in ExitCode], result.stdout


def test_error_reports_write_the_exit_code_as_a_plain_int(monkeypatch, tmp_path):
    written = []
    monkeypatch.setattr(shrink_module, "write_reports", lambda report, **paths: written.append(report))
    shrink_module.write_error_reports({}, ExitCode.USAGE, "bad option", json_path=tmp_path / "r.json")
    [report] = written
    assert type(report["error"]["exit_code"]) is int and report["error"]["exit_code"] == 2


def _literal_codes(node: ast.AST | None) -> list[int]:
    """Exit-code-like int literals in an expression (tuples and conditional expressions included)."""
    if node is None:
        return []
    constants = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
    return [value for value in constants if type(value) is int and value in CODES]


def _names(target: ast.AST) -> list[str]:
    named = [n for n in ast.walk(target) if isinstance(n, ast.Name | ast.Attribute)]
    return [n.id if isinstance(n, ast.Name) else n.attr for n in named]


def _returns_an_exit_code(func: ast.FunctionDef) -> bool:
    decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in func.decorator_list}
    annotation = ast.unparse(func.returns) if func.returns else ""
    return "handle_errors" in decorators or "ExitCode" in annotation or "exit_code" in func.name


def literal_exit_codes(source: str) -> list[str]:
    """Where a module spells an exit code as a number: sys.exit(N), code/exit_code/EXIT_* = N, exit_code=N,
    write_error_reports(..., N, ...), and returns of functions that return an exit code."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func)
            if called in ("sys.exit", "exit", "os._exit") or called.endswith("write_error_reports"):
                found += [f"line {node.lineno}: {called}(... {v} ...)" for a in node.args for v in _literal_codes(a)]
            keywords = [k.value for k in node.keywords if k.arg == "exit_code"]
            found += [f"line {node.lineno}: exit_code={v}" for k in keywords for v in _literal_codes(k)]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [name for t in targets for name in _names(t)]
            if any(name in ("code", "exit_code") or name.startswith("EXIT_") for name in names):
                found += [f"line {node.lineno}: {', '.join(names)} = {v}" for v in _literal_codes(node.value)]
        elif isinstance(node, ast.FunctionDef) and _returns_an_exit_code(node):
            returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)]
            found += [f"line {r.lineno}: {node.name} returns {v}" for r in returns for v in _literal_codes(r.value)]
    return found


def test_the_scan_finds_literal_exit_codes():
    """The scan below would catch what the package did before ExitCode."""
    before = """
EXIT_OK, EXIT_GATE_FAILED = 0, 1
class E(Exception):
    exit_code = 3
def wrapper():
    code = 130
    sys.exit(code)
@handle_errors
def gate_command():
    return 0 if passed else 1
def verdict_exit_code(section) -> int:
    return 1
def run(self) -> tuple[dict, ExitCode]:
    return report, 0 if chosen else 1
def shrink():
    write_error_reports(report, 3, "internal error")
"""
    found = literal_exit_codes(before)
    assert len(found) == 10, found


def test_no_literal_exit_codes_in_the_package():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "errors.py":  # the enum itself
            continue
        found += [f"{path.relative_to(ROOT)} {where}" for where in literal_exit_codes(path.read_text(encoding="utf-8"))]
    assert found == [], "use onnxshrink.errors.ExitCode:\n" + "\n".join(found)
