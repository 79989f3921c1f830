"""One run: a recipe (``recipe``) becomes a chain of methods (``pipeline``) applied, validated,
gated and reported by ``shrink``; ``measure`` benches and gates existing models; ``inspect_model``
describes one."""
