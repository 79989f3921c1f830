"""Helpers of weight_prune's default: prune as far as a fidelity budget allows, then store the zeros small.

- :mod:`.probe`: one onnxruntime session whose weights can be swapped, and the worst per-feed cosine.
- :mod:`.budget`: per-tensor sensitivity, the order tensors are pruned in, the search for the budget.
- :mod:`.store`: each pruned tensor in the smallest form onnxruntime folds at load (dense or bitmask).
"""
