"""Host-independent math of ComfyUI-STORM (pure torch, numpy, scipy and lazily spaCy; no ComfyUI).

Modules
-------
tokens                  token layouts of CLIP prompts, subject-word resolution
attention               aggregation of cross-attention probabilities, A&E softmax over tokens
smoothing               Gaussian smoothing with explicit kernel conventions
guidance                composable loss terms, step windows, step sizes, gradient bounds
optimize                latent updates, gradient clipping and iterative refinement driven by callables
losses                  one module per method: Attend-and-Excite, SynGen, A-STAR, STORM (paper + reference)
ot                      log-domain batched Sinkhorn, exact small-problem OT, grid costs and centroids
analysis                data types of prompt analysis (entities, bindings, spatial relations)
nlp                     spaCy pipeline discovery and lazy loading, word -> CLIP column alignment
prompt_analysis         SynGen modifier sets from the dependency parse, rule fallback, overrides
relations               spatial relations from the dependency parse, overrides, validation
interpolation           AID/PAID interpolated attention (inner, outer, fused), chunking
interpolation_schedule  Beta schedule, slerp/lerp, warm-up
"""

from .errors import ConvergenceWarning, ShapeError, StormError

__all__ = ["ConvergenceWarning", "ShapeError", "StormError"]
