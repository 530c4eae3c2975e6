"""Baseline data-selection methods for the benchmarks (not part of the library).

Every method has the same entry point ``select(model, tokenizer, pool, val, n, seed, ...)``
returning pool row indices: ``random_select``, ``max_uncertainty``, ``less``, ``tov``, and
the training-free ``embedding`` (MiniLM cosine to the val centroid), ``length`` (scored length
near the val median) and ``label_prior`` (entity share, token classification only), which also
expose ``scores(model, tokenizer, pool, val, **kwargs)`` (float64, higher = picked first).
``model`` is a plain transformers model (no adapter); each method works on its own copy.
"""
