"""The ``onnxshrink`` command line.

``onnxshrink MODEL --plugin NAME[:key=value,...]`` shrinks (the default command); ``plugins``,
``inspect``, ``bench`` and ``gate`` are subcommands. Exit codes: 0 ok or gate passed, 1 gate failed,
2 usage or invalid input, 3 plugin or internal failure.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import OnnxShrinkError, UsageError

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_FAILURE = 0, 1, 2, 3


class _State:
    traceback = False


def _err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def handle_errors(func: Callable[..., int | None]) -> Callable[..., None]:
    """Map errors to one-line messages and exit codes; ``--traceback`` shows the stack."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = func(*args, **kwargs) or EXIT_OK
        except OnnxShrinkError as exc:
            if _State.traceback:
                traceback.print_exc()
            _err(exc.message)
            code = exc.exit_code
        except KeyboardInterrupt:
            _err("interrupted; nothing was written")
            code = 130
        except Exception as exc:  # noqa: BLE001 - never a bare traceback by default
            if _State.traceback:
                traceback.print_exc()
            _err(f"internal error: {type(exc).__name__}: {exc} (rerun with --traceback for details)")
            code = EXIT_FAILURE
        sys.exit(code)

    return wrapper


def traceback_option(func: Callable[..., Any]) -> Callable[..., Any]:
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        _State.traceback = _State.traceback or value
        return value

    return click.option("--traceback", is_flag=True, expose_value=False, callback=remember, is_eager=True, help="Show the full Python traceback on errors.")(func)


class DefaultGroup(click.Group):
    """A group whose default command is ``shrink``: ``onnxshrink MODEL --plugin ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["shrink", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("onnxshrink", "MODEL --plugin NAME[:key=value,...] [OPTIONS]\n       onnxshrink COMMAND [ARGS]...")


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxshrink")
def main() -> None:
    """Shrink ONNX models with plugin methods, prove what changed, and gate the release.

    \b
    onnxshrink model.onnx --plugin weight_prune
    onnxshrink model.onnx --plugin weight_prune:sparsity=0.7,scope=global -o small.onnx --report r.json
    onnxshrink plugins          list the methods and their options
    onnxshrink inspect m.onnx   sizes, parameters, ops, inputs and outputs

    Run `onnxshrink shrink --help` for every option of a shrink run.
    Exit codes: 0 ok (gate passed), 1 gate failed, 2 usage or invalid input, 3 plugin or internal failure.
    """


def _console(quiet: bool = False) -> Console:
    return Console(quiet=quiet, highlight=False)


def _stderr_console(quiet: bool) -> Console:
    return Console(stderr=True, quiet=quiet, highlight=False)


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from .validate.data import parse_input_shape

    return dict(parse_input_shape(v) for v in values)


@main.command("shrink")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--plugin", "-p", "plugins", multiple=True, metavar="NAME[:k=v,...]", help="A method to apply; repeat for a chain (applied in order).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model (default: <stem>.shrunk.onnx beside the input).")
@click.option("--report", "report_json", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--seed", type=int, default=None, help="Seed for every random choice (default 0).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@traceback_option
@handle_errors
def shrink_command(model: Path | None, plugins: tuple[str, ...], output: Path | None, report_json: Path | None, seed: int | None, quiet: bool) -> int:
    """Apply methods to MODEL, save the result, and print what changed."""
    from .console import print_report, rich_progress
    from .method import parse_plugin_spec
    from .shrink import ShrinkJob, shrink

    if model is None:
        raise UsageError("missing MODEL; usage: onnxshrink MODEL --plugin NAME[:key=value,...]")
    specs = [parse_plugin_spec(p) for p in plugins]
    job = ShrinkJob(model=model, steps=specs, output=output, seed=seed or 0, report_json=report_json, validate=False)
    err = _stderr_console(quiet)
    report = shrink(
        job,
        progress=lambda description, total: rich_progress(err, description, total),
        log=lambda message: err.print(message, markup=False),
    )
    if not quiet:
        print_report(report, _console())
    return EXIT_OK


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@traceback_option
@handle_errors
def plugins_command(as_json: bool) -> int:
    """List every method: kind, source distribution and version, options with types, defaults and docs."""
    from .plugins import default_registry

    registry = default_registry()
    methods = [info.describe() for _, info in sorted(registry.methods.items())]
    errors = [{"plugin": e.plugin, "distribution": e.distribution, "version": e.version, "error": e.message} for e in registry.errors]
    if as_json:
        click.echo(json.dumps({"methods": methods, "errors": errors}, indent=2))
        return EXIT_OK
    console = _console()
    for m in methods:
        console.print(f"[bold]{m['name']}[/] ({m['kind']}) from {m['distribution']} {m['version']}: {m['summary']}")
        table = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("option", "type", "default", "doc"):
            table.add_column(col)
        for opt in m["options"]:
            doc = opt["doc"] + (f" One of: {', '.join(map(str, opt['choices']))}." if "choices" in opt else "")
            table.add_row(opt["name"], opt["type"], repr(opt["default"]) if opt["default"] is not None else "-", doc)
        console.print(table)
        console.print()
    for e in errors:
        console.print(f"[red]broken plugin[/] {e['plugin']} ({e['distribution']} {e['version']}): {e['error']}")
    return EXIT_OK


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@traceback_option
@handle_errors
def inspect_command(model: Path, as_json: bool) -> int:
    """Show file size (with external data), parameters, non-zeros, op histogram, inputs, outputs and opsets."""
    from .console import human_bytes
    from .inspect_model import inspect_model

    info = inspect_model(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return EXIT_OK
    console = _console()
    size = info["size"]
    console.print(f"[bold]{info['path']}[/]  IR {info['ir_version']}  opsets {info['opsets']}  producer {info['producer'] or '-'}")
    console.print(
        f"file {human_bytes(size['file_bytes'])}  compressed {human_bytes(size['compressed_bytes'])}  "
        f"parameters {size['params']:,}  non-zeros {size['nonzeros']:,}"
    )
    io = Table(title="Inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io.add_row(kind[:-1], v["name"], v["dtype"], "x".join(str(d) if d is not None else "?" for d in v["shape"]))
    console.print(io)
    ops = Table(title=f"Ops ({info['nodes']} nodes)", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    main()
