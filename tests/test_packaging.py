"""The wheel ships onnxshrink/ and onnxshrink_plugins/ only, and declares the built-ins as entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.support.files import ROOT


def test_wheel_contents(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = tmp_path.glob("onnxshrink-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"onnxshrink", "onnxshrink_plugins"}  # never a top-level 'plugins' package
    assert "onnxshrink_plugins/weight_prune.py" in names
    assert {"onnxshrink/reports/assets/chart.umd.min.js", "onnxshrink/reports/assets/LICENSE-chart.js.md"} <= set(
        names
    )  # the HTML report's inlined chart library
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[onnxshrink]" in text and "weight_prune = onnxshrink_plugins.weight_prune" in text
    assert "onnxshrink = onnxshrink.cli:main" in text
