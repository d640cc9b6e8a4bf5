"""Developer scripts. Run them from the repository root as modules, e.g. ``python -m scripts.run_example``.

The scripts import the harness (``harness/``: hosts, tiny models, the shape world and its evaluator, the
workflow runner) plainly, as the tests do: ``python -m`` from the repository root puts that root on
``sys.path``.

``STORM_BLOCK_IMPORTS=name,name,...`` makes importing those top-level packages fail in this process (and,
through the environment, in the processes it starts): a check on a CPU that a run needs nothing that a lent
GPU machine lacks (``harness.device_image``; ``python -m scripts.gpu_evidence --device-image-check``).
"""

from __future__ import annotations

import os
import sys


def block_imports() -> None:
    """``None`` in ``sys.modules`` is Python's own marker of a module that must not be imported: ``import`` raises
    ModuleNotFoundError and ``importlib.util.find_spec`` answers None, as for a package that is not installed."""
    for name in os.environ.get("STORM_BLOCK_IMPORTS", "").split(","):
        if name and name not in sys.modules:
            sys.modules[name] = None


block_imports()
