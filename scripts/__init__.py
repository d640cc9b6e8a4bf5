"""Developer scripts. Run them from the repository root as modules, e.g. ``python -m scripts.run_example``.

Importing this package makes the test harness (``tests/harness``) importable as ``harness``, the
name the tests give it (pytest puts ``tests/`` on ``sys.path``). The package is loaded from its
folder, the way the harness loads the pack, so no folder is added to ``sys.path`` and nothing else
under ``tests/`` becomes importable.

``STORM_BLOCK_IMPORTS=name,name,...`` makes importing those top-level packages fail in this process (and,
through the environment, in the processes it starts): a check on a CPU that a run needs nothing that a lent
GPU machine lacks (``harness.device_image``; ``python -m scripts.gpu_evidence --device-image-check``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parents[1] / "tests" / "harness"


def _import_harness() -> None:
    if "harness" in sys.modules:  # under pytest, or imported already
        return
    spec = importlib.util.spec_from_file_location("harness", HARNESS_DIR / "__init__.py",
                                                  submodule_search_locations=[str(HARNESS_DIR)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the test harness from {HARNESS_DIR}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["harness"]
        raise


def block_imports() -> None:
    """``None`` in ``sys.modules`` is Python's own marker of a module that must not be imported: ``import`` raises
    ModuleNotFoundError and ``importlib.util.find_spec`` answers None, as for a package that is not installed."""
    for name in os.environ.get("STORM_BLOCK_IMPORTS", "").split(","):
        if name and name not in sys.modules:
            sys.modules[name] = None


block_imports()
_import_harness()
