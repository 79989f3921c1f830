"""How a weight is stored: integer quantization (``integer``), bit packing (``bits``), and the packed,
sparse and DequantizeLinear forms onnxruntime folds back to float (``forms``)."""
