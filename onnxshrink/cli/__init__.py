"""The ``onnxshrink`` command line.

``onnxshrink MODEL --plugin NAME[:key=value,...]`` shrinks (the default command); ``plugins``,
``inspect``, ``bench``, ``gate`` and ``tune`` are subcommands. Exit codes: ``errors.ExitCode``
(0 ok or gate passed, 1 gate failed, 2 usage or invalid input, 3 plugin or internal failure, 130 interrupted).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxshrink.cli.console import gate_table, human_bytes, print_bench, print_report, print_validation, rich_progress
from onnxshrink.errors import ExitCode, OnnxShrinkError, UsageError
from onnxshrink.ir.io import check_writable_file
from onnxshrink.plugin.method import parse_plugin_spec
from onnxshrink.plugin.registry import default_registry
from onnxshrink.reports import report_json
from onnxshrink.reports.html import read_report, write_html
from onnxshrink.run.inspect_model import inspect_model
from onnxshrink.run.measure import bench, gate_models
from onnxshrink.run.shrink import REPORT_SCHEMA, job_from, shrink, tool_info, write_error_reports
from onnxshrink.tune import TuneJob, parse_bytes, parse_duration, tune
from onnxshrink.tune.summary import print_summary
from onnxshrink.validate.data import parse_input_shape
from onnxshrink.validate.gate import verdict_exit_code
from onnxshrink.validate.providers import parse_providers
from onnxshrink.validate.tensors import tensor_breakdown
from onnxshrink.version import __version__


class _State:
    traceback = False


def _err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def handle_errors(func: Callable[..., int | None]) -> Callable[..., None]:
    """Map errors to one-line messages and exit codes; ``--traceback`` shows the stack."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            code = func(*args, **kwargs) or ExitCode.OK
        except OnnxShrinkError as exc:
            if _State.traceback:
                traceback.print_exc()
            _err(exc.message)
            code = exc.exit_code
        except KeyboardInterrupt:
            _err("interrupted; files are written atomically, so no partial file was left")
            code = ExitCode.INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - never a bare traceback by default
            if _State.traceback:
                traceback.print_exc()
            _err(f"internal error: {type(exc).__name__}: {exc} (rerun with --traceback for details)")
            code = ExitCode.FAILURE
        sys.exit(code)

    return wrapper


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (a CI job cancelled) cleans up like Ctrl-C: temporary files removed, no partial output."""
    raise KeyboardInterrupt


def traceback_option(func: Callable[..., Any]) -> Callable[..., Any]:
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        _State.traceback = _State.traceback or value
        return value

    return click.option(
        "--traceback",
        is_flag=True,
        expose_value=False,
        callback=remember,
        is_eager=True,
        help="Show the full Python traceback on errors.",
    )(func)


class DefaultGroup(click.Group):
    """A group whose default command is ``shrink``: ``onnxshrink MODEL --plugin ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["shrink", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(
            "onnxshrink", "MODEL --plugin NAME[:key=value,...] [OPTIONS]\n       onnxshrink COMMAND [ARGS]..."
        )


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxshrink")
def main() -> None:
    """Shrink ONNX models with plugin methods, prove what changed, and gate the release.

    \b
    onnxshrink model.onnx --plugin weight_prune
    onnxshrink model.onnx --plugin weight_prune:sparsity=0.7,scope=global -o small.onnx --report r.json
    onnxshrink plugins          list the methods and their options
    onnxshrink inspect m.onnx   sizes, parameters, ops, inputs and outputs
    onnxshrink tune m.onnx --data d.npz --gate 'cosine>=0.99'   search for the smallest passing model

    Run `onnxshrink shrink --help` for every option of a shrink run.
    Exit codes: 0 ok (gate passed), 1 gate failed, 2 usage or invalid input, 3 plugin or internal failure,
    130 interrupted.
    """


def _console(quiet: bool = False) -> Console:
    """stdout; tables are 120 columns wide when stdout is not a terminal (logs, CI)."""
    console = Console(quiet=quiet, highlight=False)
    if not console.is_terminal:
        console.width = 120
    return console


def _stderr_console(quiet: bool) -> Console:
    """stderr; off a terminal (logs, CI) lines are never wrapped, so each message stays one line."""
    console = Console(stderr=True, quiet=quiet, highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return dict(parse_input_shape(v) for v in values)


def _validation_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that measures models."""
    options = [
        click.option(
            "--data",
            type=click.Path(path_type=Path),
            help="Evaluation/calibration data: a .npz (keys = input names, optional 'labels'), a folder of .npz files "
            "(each a full set of keys, read in name order), or a folder of <input>.npy files (+ labels.npy). An "
            "array with "
            "the input's rank is one batch (cut into feeds of 32 samples when every input's first dim is dynamic); one "
            "more axis is a stack, axis 0 separating feeds. Methods that calibrate take the first half of the feeds, "
            "fidelity and latency the rest. Without --data, synthetic inputs the model runs on are made.",
        ),
        click.option(
            "--input-shape",
            "input_shapes",
            multiple=True,
            metavar="NAME=1x3x224x224",
            help="Shape of an input's synthetic data (repeatable); its named dims hold for every input sharing them.",
        ),
        click.option(
            "--providers",
            default=None,
            metavar="cpu,cuda,tensorrt",
            help="Execution providers to time (default: cpu). Missing ones are reported unavailable.",
        ),
        click.option(
            "--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads for timing (default 1)."
        ),
        click.option(
            "--repeats",
            type=click.IntRange(min=1),
            default=None,
            help="Timed runs per model and provider (default 20).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _gate_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--gate",
            "gates",
            multiple=True,
            metavar="'METRIC[EP] OP NUMBER'",
            help="A release check, e.g. 'size_ratio<=0.5' or 'latency_ratio[cpu]<=1.0' (repeatable). See docs/gate.md.",
        ),
        click.option(
            "--allow-unavailable",
            is_flag=True,
            default=None,
            help="A check on an execution provider that is not available passes (and the report says so).",
        ),
        click.option(
            "--strict-latency",
            is_flag=True,
            default=None,
            help="A latency check passes only when its whole 95% interval meets the threshold (default: an interval "
            "straddling it is 'inconclusive' and passes).",
        ),
        click.option("--junit", type=click.Path(path_type=Path), help="Write the gate checks as JUnit XML."),
        click.option("--report", "report_json", type=click.Path(path_type=Path), help="Write the JSON report here."),
        click.option(
            "--markdown", type=click.Path(path_type=Path), help="Write a Markdown summary (for a pull-request comment)."
        ),
        click.option(
            "--html",
            type=click.Path(path_type=Path),
            help="Write a self-contained HTML report with charts (one file, works offline).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _progress_and_log(quiet: bool) -> dict[str, Any]:
    err = _stderr_console(quiet)
    return {
        "progress": lambda description, total, unit="": rich_progress(err, description, total, unit),
        "log": lambda message: err.print(message, markup=False),
    }


def _providers(value: str | None) -> list[str] | None:
    if value is None:
        return None

    return list(parse_providers(value))


@main.command("shrink")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option(
    "--plugin",
    "-p",
    "plugins",
    multiple=True,
    metavar="NAME[:k=v,...]",
    help="A method to apply; repeat for a chain (applied in order).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output model (default: <stem>.shrunk.onnx beside the input).",
)
@click.option(
    "--recipe",
    type=click.Path(path_type=Path),
    help="A TOML recipe with the chain, data, providers, gates and outputs; flags override it.",
)
@click.option("--seed", type=int, default=None, help="Seed for every random choice (default 0).")
@_validation_options
@click.option(
    "--no-validate",
    is_flag=True,
    default=None,
    help="Skip validation (size is still reported); for huge models and quick runs.",
)
@_gate_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@traceback_option
@handle_errors
def shrink_command(model: Path | None, plugins: tuple[str, ...], recipe: Path | None, quiet: bool, **flags: Any) -> int:
    """Apply methods to MODEL, save the result, validate it against MODEL, and gate it.

    \b
    onnxshrink model.onnx --plugin weight_prune --data eval.npz
    onnxshrink model.onnx --plugin weight_prune --gate 'size_ratio<=0.5' --junit gate.xml
    onnxshrink --recipe shrink.toml model.onnx

    Data (--data): a .npz whose keys are the input names (inputs with an initializer may be left out)
    plus optional 'labels' (one per sample, over all feeds in order); a folder of such .npz files, read
    in file-name order and concatenated; or a folder of <input>.npy files (plus labels.npy). A feed is
    one session run. An array with the input's rank is one batch, cut along axis 0 into feeds of 32
    samples when every input's first dimension is dynamic and the arrays are longer; an array with one
    extra leading axis is a stack, one feed per entry of axis 0. When a method calibrates, the first
    half of the feeds (at least one, never all) calibrates it and the rest measure fidelity and
    latency; otherwise every feed is measured.

    Without --data: 8 synthetic feeds. Integers that index a table stay inside it, masks are ones,
    dynamic dimensions come from --input-shape, from the graph, or from a search of small sizes that
    onnxruntime runs; what was chosen is printed and kept in the report.

    Exit codes: 0 ok, 1 a gate failed (the candidate is kept), 2 usage or invalid input, 3 plugin or
    internal failure. On 2 or 3 no model is written (a file already at the output path stays as it
    was) and the --report/--junit/--markdown files still say what failed.
    """
    overrides = {
        "output": flags["output"],
        "seed": flags["seed"],
        "data_path": flags["data"],
        "input_shapes": _parse_shapes(flags["input_shapes"]) if flags["input_shapes"] else None,
        "providers": _providers(flags["providers"]),
        "threads": flags["threads"],
        "repeats": flags["repeats"],
        "validate": False if flags["no_validate"] else None,
        "gates": list(flags["gates"]) or None,
        "allow_unavailable": flags["allow_unavailable"],
        "strict_latency": flags["strict_latency"],
        "report_json": flags["report_json"],
        "junit": flags["junit"],
        "markdown": flags["markdown"],
        "html": flags["html"],
    }
    try:
        job = job_from(model=model, steps=[parse_plugin_spec(p) for p in plugins], recipe=recipe, overrides=overrides)
    except OnnxShrinkError as exc:  # no job yet: the reports named on the command line still say why
        write_error_reports(
            {"schema": REPORT_SCHEMA, "tool": tool_info(), "input": {"path": str(model) if model else None}},
            exc.exit_code,
            exc.message,
            json_path=flags["report_json"],
            junit_path=flags["junit"],
            markdown_path=flags["markdown"],
        )
        raise
    report = shrink(job, **_progress_and_log(quiet))
    if not quiet:
        print_report(report, _console())
    return verdict_exit_code(report.get("gate"))


@main.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@_validation_options
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
@click.option("--html", type=click.Path(path_type=Path), help="Also write a self-contained HTML report with charts.")
@traceback_option
@handle_errors
def bench_command(
    models: tuple[Path, ...],
    as_json: bool,
    html: Path | None,
    data: Path | None,
    input_shapes: tuple[str, ...],
    providers: str | None,
    threads: int | None,
    repeats: int | None,
) -> int:
    """Measure one model (size and latency) or compare two: BASELINE CANDIDATE (size, latency, fidelity).

    Works on any two models, e.g. another tool's output against its input.
    """
    if len(models) > 2:
        raise UsageError(f"bench takes one or two models, got {len(models)}")
    if html:
        check_writable_file(html)
    result = bench(
        list(models),
        data=data,
        input_shapes=_parse_shapes(input_shapes),
        providers=_providers(providers) or ["cpu"],
        threads=threads or 1,
        repeats=repeats or 20,
    )
    if as_json:
        click.echo(report_json(result), nl=False)
    else:
        print_bench(result, _console())
    if html:
        _write_html(result, html, models)
    return ExitCode.OK


@main.command("gate")
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@_validation_options
@_gate_options
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@traceback_option
@handle_errors
def gate_command(
    baseline: Path,
    candidate: Path,
    quiet: bool,
    gates: tuple[str, ...],
    allow_unavailable: bool | None,
    strict_latency: bool | None,
    junit: Path | None,
    report_json: Path | None,
    markdown: Path | None,
    html: Path | None,
    data: Path | None,
    input_shapes: tuple[str, ...],
    providers: str | None,
    threads: int | None,
    repeats: int | None,
) -> int:
    """Validate CANDIDATE against BASELINE and apply the --gate checks (exit 1 when one fails)."""
    if not gates:
        raise UsageError("gate needs at least one --gate check, e.g. --gate 'cosine>=0.999'")
    if html:
        check_writable_file(html)
    report = gate_models(
        baseline,
        candidate,
        gates=list(gates),
        allow_unavailable=bool(allow_unavailable),
        strict_latency=bool(strict_latency),
        data=data,
        input_shapes=_parse_shapes(input_shapes),
        providers=_providers(providers) or ["cpu"],
        threads=threads or 1,
        repeats=repeats or 20,
        report_json=report_json,
        junit=junit,
        markdown=markdown,
        log=_progress_and_log(quiet)["log"],
    )
    if not quiet:
        console = _console()
        print_validation(report["validation"], console)
        console.print(gate_table(report["gate"]))
    if html:
        _write_html(report, html, (baseline, candidate))
    return verdict_exit_code(report["gate"])


def _write_html(report: dict[str, Any], path: Path, models: tuple[Path, ...]) -> None:
    """The HTML page, with the per-tensor byte breakdown of the models compared (see docs/report.md)."""
    if "tensors" not in report:
        report = {**report, "tensors": tensor_breakdown(*models[:2])}
    write_html(report, path)


@main.command("report")
@click.argument("report_file", metavar="REPORT.json", type=click.Path(path_type=Path))
@click.option("--html", type=click.Path(path_type=Path), required=True, help="Where to write the HTML page.")
@traceback_option
@handle_errors
def report_command(report_file: Path, html: Path) -> int:
    """Render a saved JSON report (shrink, gate, bench --json, or tune) as one self-contained HTML page.

    \b
    onnxshrink report out/report.json --html out/report.html
    """
    write_html(read_report(report_file), html)
    return ExitCode.OK


@main.command("tune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Data (.npz or folder): methods calibrate on the first half of the feeds, fidelity is judged on the rest.",
)
@click.option(
    "--gate",
    "gates",
    multiple=True,
    required=True,
    metavar="'METRIC[EP] OP NUMBER'",
    help="A check every chosen model must pass (repeatable), e.g. 'cosine>=0.99', 'latency_ratio[cpu]<=1.0'.",
)
@click.option(
    "--objective",
    type=click.Choice(["size"]),
    default="size",
    show_default=True,
    help="What to minimize among models that pass the gate.",
)
@click.option(
    "--time",
    "time_budget",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="Time budget for the whole run: 90s, 10m, 1h.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many trials (whichever comes first with --time).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Trials at a time (default 1; with --ray: the cluster's CPUs).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run trials as Ray tasks: --ray starts a local Ray runtime, --ray ADDRESS joins a cluster (pip install "
    "'onnxshrink[ray]').",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="The chosen model (default: <stem>.tuned.onnx beside MODEL); written only when a model passed.",
)
@click.option(
    "--report",
    "report_json",
    type=click.Path(path_type=Path),
    help="Write the tune report (every trial, the Pareto front, the choice) as JSON.",
)
@click.option(
    "--plugin",
    "-p",
    "plugins",
    multiple=True,
    metavar="NAME[:k=v,...]",
    help="Search only these methods (repeatable); options given are fixed.",
)
@click.option(
    "--space",
    "space_file",
    type=click.Path(path_type=Path),
    help="A TOML file with the chains and option ranges to search (docs/tune.md).",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue from an earlier --report: its trials are replayed into the search.",
)
@click.option(
    "--html",
    type=click.Path(path_type=Path),
    help="Also write the tune report as a self-contained HTML page (Pareto front, every trial).",
)
@click.option(
    "--save-recipe",
    type=click.Path(path_type=Path),
    help="Write the chosen chain as a recipe that `onnxshrink --recipe` rebuilds byte-identically.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search and of every method.")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=1x3x224x224",
    help="Fix dynamic dimensions of an input (repeatable).",
)
@click.option(
    "--trial-timeout",
    default=None,
    metavar="DURATION",
    help="Time limit per trial (default: a third of --time, at least 60 s).",
)
@click.option(
    "--trial-memory",
    default=None,
    metavar="SIZE",
    help="Address-space limit per trial, e.g. 4G (default: twice memory / jobs, at least 4G; none on Ray).",
)
@click.option("--allow-unavailable", is_flag=True, help="A latency check on a provider that is not available passes.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@traceback_option
@handle_errors
def tune_command(
    model: Path, quiet: bool, plugins: tuple[str, ...], ray_address: str | None, time_budget: str, **flags: Any
) -> int:
    """Search chains of methods and their options for the smallest model that passes every --gate.

    \b
    onnxshrink tune model.onnx --data eval.npz --gate 'cosine>=0.99' --gate 'latency_ratio[cpu]<=1.0' \\
        --time 10m -o best.onnx --report tune.json --save-recipe best.toml
    onnxshrink tune model.onnx --data eval.npz --gate 'cosine>=0.99' --ray --jobs 8

    Exit codes: 0 a model passing every gate was written, 1 none passed (the report is still written),
    2 usage, 3 internal failure. See docs/tune.md.
    """
    html = flags.pop("html")
    if html:
        check_writable_file(html)
    job = TuneJob(
        model=model,
        gates=list(flags["gates"]),
        data=flags["data"],
        objective=flags["objective"],
        time_s=parse_duration(time_budget),
        trials=flags["trials"],
        jobs=flags["jobs"],
        ray=ray_address is not None,
        ray_address=ray_address or None,
        output=flags["output"],
        report=flags["report_json"],
        plugins=[parse_plugin_spec(p) for p in plugins],
        space_file=flags["space_file"],
        resume=flags["resume"],
        save_recipe=flags["save_recipe"],
        seed=flags["seed"],
        input_shapes=_parse_shapes(flags["input_shapes"]),
        trial_timeout_s=parse_duration(flags["trial_timeout"], "--trial-timeout") if flags["trial_timeout"] else None,
        trial_memory_bytes=parse_bytes(flags["trial_memory"]) if flags["trial_memory"] else None,
        allow_unavailable=flags["allow_unavailable"],
    )
    report, code = tune(job, console=_stderr_console(quiet))
    if html:
        write_html(report, html)
    if not quiet:
        print_summary(report, _console())
    return code


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@traceback_option
@handle_errors
def plugins_command(as_json: bool) -> int:
    """List every method: kind, source distribution and version, options with types, defaults and docs."""
    registry = default_registry()
    methods = [info.describe() for _, info in sorted(registry.methods.items())]
    errors = [
        {"plugin": e.plugin, "distribution": e.distribution, "version": e.version, "error": e.message}
        for e in registry.errors
    ]
    if as_json:
        click.echo(
            json.dumps({"methods": methods, "errors": errors, "skipped": registry.skipped}, indent=2, default=str)
        )
        return ExitCode.OK
    console = _console()
    for m in methods:
        console.print(
            Text(f"{m['name']} ({m['kind']}) from {m['distribution']} {m['version']}: {m['summary']}", style="bold")
        )
        table = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("option", "type", "default", "doc"):
            table.add_column(col)
        for opt in m["options"]:
            doc = opt["doc"] + (f" One of: {', '.join(map(str, opt['choices']))}." if "choices" in opt else "")
            doc += f" Only with {opt['condition']}." if opt.get("condition") else ""
            table.add_row(
                opt["name"], opt["type"], repr(opt["default"]) if opt["default"] is not None else "-", Text(doc)
            )
        console.print(table)
        if m["search_space"]:
            console.print(
                Text(f"  tune searches: {search_space_text(m['search_space'], m['search_fixed'])}", style="dim")
            )
        if m["lossless"]:
            console.print(Text("  lossless (same outputs): tune ends every chain with it", style="dim"))
        console.print()
    for e in errors:
        console.print(
            Text(f"broken plugin {e['plugin']} ({e['distribution']} {e['version']}): {e['error']}", style="red")
        )
    if registry.skipped:
        console.print(
            Text(
                f"not loaded (ONNXSHRINK_LOAD_PLUGINS / ONNXSHRINK_BLOCK_PLUGINS): {', '.join(registry.skipped)}",
                style="dim",
            )
        )
    return ExitCode.OK


def search_space_text(space: list[dict], fixed: dict) -> str:
    """``bits in {4, 8}; sparsity 0.1..0.9 (step 0.1); with mode=storage`` for ``onnxshrink plugins``."""
    parts = []
    for t in space:
        if "choices" in t:
            parts.append(f"{t['option']} in {{{', '.join(map(str, t['choices']))}}}")
        else:
            extra = ([f"step {t['step']}"] if "step" in t else []) + (["log scale"] if t.get("log") else [])
            parts.append(f"{t['option']} {t['low']}..{t['high']}" + (f" ({', '.join(extra)})" if extra else ""))
        if t.get("where") == "default":
            parts[-1] += " (at its defaults only)"
        elif t.get("where") == "both":
            parts[-1] += " (also at its defaults)"
    if fixed:
        parts.append("with " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    return "; ".join(parts)


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@traceback_option
@handle_errors
def inspect_command(model: Path, as_json: bool) -> int:
    """Show file size (with external data), parameters, non-zeros, op histogram, inputs, outputs and opsets."""
    info = inspect_model(model)
    if as_json:
        click.echo(report_json(info), nl=False)
        return ExitCode.OK
    console = _console()
    size = info["size"]
    console.print(
        f"[bold]{info['path']}[/]  IR {info['ir_version']}  opsets {info['opsets']}  producer {info['producer'] or '-'}"
    )
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
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    main()
