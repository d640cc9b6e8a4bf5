"""Host-independent math of ComfyUI-STORM (pure torch, numpy, scipy and lazily spaCy; no ComfyUI).

Rooms
-----
tokens      which conditioning row holds which piece of which word; the words users name
prompt      prompt analysis: objects, modifiers, spatial relations (spaCy or rules), user overrides
attention   recorded probabilities -> one map per word (aggregation, token softmax, smoothing, shapes)
guidance    loss terms on a schedule, the latent update and refinement, gradients through frozen weights
losses      one module per method: attend_excite, syngen, astar, transport_* (STORM: shared core, paper
            mode, reference mode, chosen by name in transport), ot (Sinkhorn and grid costs)
aid         AID/PAID interpolated attention, Beta schedule, dynamic selection
errors      StormError and the other exceptions every room raises
"""

from .errors import ConvergenceWarning, ShapeError, StormError

__all__ = ["ConvergenceWarning", "ShapeError", "StormError"]
