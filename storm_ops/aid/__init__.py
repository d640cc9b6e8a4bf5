"""AID / PAID attention interpolation (He et al., NeurIPS 2024).

* ``interpolation``: the interpolated attention (inner, outer, fused) and its chunking;
* ``schedule``: the Beta schedule of coefficients, slerp/lerp, warm-up;
* ``selection``: dynamic selection of the coefficients (Beta prior refit, min-spread path) and the smoothness
  and consistency measures of a sequence.
"""
