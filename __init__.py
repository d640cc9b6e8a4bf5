"""ComfyUI-STORM: training-free, attention-based guidance for text-to-image diffusion.

ComfyUI imports this file as a package (``custom_nodes/<folder>/__init__.py``) after it has
imported its own ``comfy`` package. The registration is guarded on exactly that, so tools and
the test suite (pytest imports this file as the root package of the repository) can import the
pure-torch layer ``storm_ops`` without ComfyUI and without loading the nodes. Errors inside our
own modules still propagate.
"""

import sys

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}


def _loaded_by_host() -> bool:
    return bool(__package__) and "comfy" in sys.modules


if _loaded_by_host():
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
