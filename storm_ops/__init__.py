"""Host-independent math of ComfyUI-STORM (pure torch, numpy, scipy and lazily spaCy; no ComfyUI).

Modules
-------
token_layout     which conditioning column holds which piece of which word; token conventions
clip_vocab       text of CLIP's BPE vocabulary entries (independent of the transformers release)
subjects         words a user writes ("cat", "teddy bear", "dog#2", "5") resolved to columns
prompt_identity  is a conditioning the encoding of the prompt a layout was computed for?
attention        aggregation of cross-attention probabilities, A&E softmax over tokens
smoothing        Gaussian smoothing with explicit kernel conventions
shapes           shape vocabulary, map sizes, mask resampling
guidance         composable loss terms, step windows, step sizes, gradient bounds
optimize         latent updates, gradient clipping and iterative refinement driven by callables
losses           one module per method: attend_excite, syngen, astar, transport_* (STORM's spatial
                 transport: shared core, paper mode, reference mode, chosen by name in transport)
ot               log-domain batched Sinkhorn, grid costs and centroids
parsed_prompt    data types of a parsed prompt (entities, bindings, spatial relations)
nlp              spaCy pipeline discovery and lazy loading, parsed words -> CLIP columns
prompt_analysis  SynGen modifier sets from the dependency parse, rule fallback, overrides
relations        spatial relations from the dependency parse, overrides, validation
aid              AID/PAID interpolated attention (inner, outer, fused), chunking
aid_schedule     Beta schedule, slerp/lerp, warm-up
aid_selection    dynamic selection: Beta refit, exploration, min-spread path, smoothness/consistency
"""

from .errors import ConvergenceWarning, ShapeError, StormError

__all__ = ["ConvergenceWarning", "ShapeError", "StormError"]
