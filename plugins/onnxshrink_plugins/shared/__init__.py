"""Helpers several built-in methods share (not a method; no entry point).

``layers``: which weights the low-bit methods work on and how each weighted op reads its weight,
used by gptq, binarize, sparse_store and int_quant's packed forms (``quant/forms.py``); it is also
the one home of ``WEIGHTED_OPS``.
"""
