"""`make bench`: run every benchmarks/bench_*.py module's main(), one after the other.

Each benchmark prints its own table; ratios inside a table are measured side by side in one run.
Select some with `python benchmarks/run.py quant prune`. `bench_zoo` needs the real-model zoo
(`make zoo`, or `ONNXSHRINK_ZOO`) and says "zoo: skipped" without it; it is the slowest by far.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    modules = sorted(HERE.glob("bench_*.py"))
    if wanted:
        modules = [m for m in modules if m.stem.removeprefix("bench_") in wanted]
    if not modules:
        print(f"no benchmark matched {sorted(wanted)}; have: {[m.stem for m in sorted(HERE.glob('bench_*.py'))]}")
        return 2
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"\n=== {path.stem} ===", flush=True)
        started = time.perf_counter()
        module.main()
        print(f"({path.stem} took {time.perf_counter() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
