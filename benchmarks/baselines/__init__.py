"""Baseline data-selection methods for the benchmarks (not part of the library).

Every method has the same entry point ``select(model, tokenizer, pool, val, n, seed, ...)``
returning pool row indices: ``random_select``, ``max_uncertainty``, ``less``, ``tov``.
``model`` is a plain transformers model (no adapter); each method works on its own copy.
"""
