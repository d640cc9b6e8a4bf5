"""AID / PAID attention interpolation (He et al., NeurIPS 2024).

* ``interpolation``: the interpolated attention (inner, outer, fused) and the frame chunks of a sequence;
* ``schedule``: the Beta schedule of coefficients, slerp/lerp, warm-up;
* ``selection``: dynamic selection of the coefficients (Beta prior refit, min-spread path) and the smoothness
  and consistency measures of a sequence.
"""
