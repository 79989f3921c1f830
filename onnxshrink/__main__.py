"""``python -m onnxshrink``."""

from onnxshrink.cli import main

main(prog_name="onnxshrink")
