"""Host-independent math of ComfyUI-STORM (pure torch; no ComfyUI imports).

Modules
-------
tokens      token layouts of CLIP prompts, subject-word resolution
attention   aggregation of cross-attention probabilities, A&E softmax over tokens
smoothing   Gaussian smoothing with explicit kernel conventions
guidance    composable loss terms, step windows and step sizes
optimize    latent updates and iterative refinement driven by callables
losses      one module per method (Attend-and-Excite, ...)
"""

from .errors import ConvergenceWarning, ShapeError, StormError

__all__ = ["ConvergenceWarning", "ShapeError", "StormError"]
