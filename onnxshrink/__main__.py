"""``python -m onnxshrink``."""

from .cli import main

main(prog_name="onnxshrink")
