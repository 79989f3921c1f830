"""Long fuzz run of model loading (``make fuzz``): the targets of tests/ir/test_fuzz_load.py, for minutes.

    python tests/fuzz/fuzz_load.py --seconds 600 [--crashes DIR] [--target edited|mutated|garbage|cli]

Runs hypothesis in rounds of fresh random examples until the time is up. Every example must finish
within 20 seconds (``HANG_SECONDS``; a hang fails like a crash). On a failure the falsifying input is written
to ``--crashes`` (default out/fuzz-crashes/, ignored by git) as ``<target>-<sha256>.onnx`` and the run exits 1;
reproduce with ``onnxshrink inspect FILE`` or ``load_model(FILE)``. Exit 0 when the time is up
without a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.ir.test_fuzz_load import edited_fields, fuzz_folder, garbage, load_is_safe, mutated_bytes, time_limit  # noqa: E402

TARGETS = {"edited": edited_fields, "mutated": mutated_bytes, "garbage": garbage}


def _run_cli(folder: Path, data: bytes) -> None:
    from click.testing import CliRunner

    from onnxshrink.cli import main

    path = folder / "fuzz.onnx"
    path.write_bytes(data)
    with time_limit():
        result = CliRunner().invoke(
            main,
            [str(path), "--plugin", "weight_prune", "-o", str(folder / "out.onnx"), "--no-validate", "-q"],
            catch_exceptions=False,
        )
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.stderr}"
    assert "Traceback" not in result.stderr


def fuzz_round(target: str, examples: int, crashes: Path) -> None:
    strategy = st.one_of(mutated_bytes, edited_fields) if target == "cli" else TARGETS[target]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(strategy)
    def one(data: bytes) -> None:
        try:
            with fuzz_folder() as folder:
                if target == "cli":
                    _run_cli(folder, data)
                else:
                    load_is_safe(folder, data)
        except BaseException:
            crashes.mkdir(parents=True, exist_ok=True)
            (crashes / f"{target}-{hashlib.sha256(data).hexdigest()[:16]}.onnx").write_bytes(data)
            raise

    one()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--target", choices=[*TARGETS, "cli", "all"], default="all")
    parser.add_argument("--examples", type=int, default=2000, help="examples per round")
    parser.add_argument("--crashes", type=Path, default=ROOT / "out" / "fuzz-crashes")
    args = parser.parse_args()
    targets = [*TARGETS, "cli"] if args.target == "all" else [args.target]
    deadline, rounds = time.monotonic() + args.seconds, 0
    while time.monotonic() < deadline:
        target = targets[rounds % len(targets)]
        examples = args.examples // 20 if target == "cli" else args.examples
        started = time.monotonic()
        try:
            fuzz_round(target, examples, args.crashes)
        except Exception as exc:  # noqa: BLE001 - hypothesis has printed the falsifying example
            print(
                f"FAILED on target {target!r}: {type(exc).__name__}: {exc}\ninputs written to {args.crashes}",
                file=sys.stderr,
            )
            return 1
        rounds += 1
        print(
            f"round {rounds}: {examples} {target} examples in {time.monotonic() - started:.1f} s, no failure",
            flush=True,
        )
    print(f"fuzzed {rounds} rounds for {args.seconds:.0f} s: no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
