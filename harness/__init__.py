"""Test harness for ComfyUI-STORM: real ComfyUI hosts, tiny models, in-process workflow runs.

Import it with ``tests/`` on ``sys.path`` (pytest: ``-o pythonpath=tests`` or
``[tool.pytest.ini_options] pythonpath = ["tests"]``)::

    from harness.host import ensure_host, load_pack          # pick + configure the host, import the pack
    from harness.tiny_models import build_tiny, tiny_conditioning
    from harness.workflows import get_runner, ui_to_api, substitute_checkpoints, run_prompt
    from harness.aid_probe import interpolation_stats  # what the AID patches did, per chunk

The developer scripts (``python -m scripts.NAME``) import it through the ``scripts`` package, which
loads this folder as ``harness`` without putting ``tests/`` on ``sys.path``.

Host selection: ``COMFYUI_PATH=<ComfyUI source tree>`` (required).
CPU mode is used when CUDA is unavailable or ``STORM_TEST_DEVICE=cpu``.

Nothing here imports ``comfy`` at import time; :func:`harness.host.ensure_host` must run first
(every public entry point calls it).
"""
