"""Installing a third-party plugin for a test: a module plus its ``.dist-info``."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(root: Path, dist: str, module: str, source: str, entry_name: str | None = None) -> None:
    """A module plus a ``.dist-info`` folder declaring it in the ``onnxshrink`` entry-point group."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[onnxshrink]\n{entry_name or module} = {module}\n")
