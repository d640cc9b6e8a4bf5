"""Attention maps: from the recorded probabilities to one map per word.

* ``maps``: aggregation over layers and heads, folding of tiled prompts, the token softmax, and the one
  map pipeline every loss and view uses (:class:`MapSettings`, :func:`word_maps`);
* ``smoothing``: Gaussian smoothing with explicit kernel conventions;
* ``shapes``: map sizes, shape checks and mask resampling.
"""
