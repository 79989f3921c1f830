"""Helpers several built-in methods share (not a method; no entry point).

``layers``: which weights the low-bit methods work on and how each weighted op reads its weight,
used by gptq, binarize, sparse_store and int_quant's packed forms (``quant/forms.py``); it is also
the one home of ``WEIGHTED_OPS``.
``float16``: float16 storage of a float32 constant (a Cast back folded at load), used by the
``float16`` method and int_quant's float16 form.
``input_weights``: the ``input_weights`` option (initializers that are also graph inputs made
constants) of int_quant, gptq and float16.
"""
