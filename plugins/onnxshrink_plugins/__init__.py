"""onnxshrink's built-in methods, one module each, registered through the ``onnxshrink`` entry points."""
