"""Select, configure and import the ComfyUI host that the tests run against.

The host is a real upstream ComfyUI source tree (never a hand-written fake), named by the environment
variable ``COMFYUI_PATH=<tree>``: a git checkout of Comfy-Org/ComfyUI, or a tree unpacked by
``../shared/hosts/unpack VERSION`` (CI runs 0.33.0 and 0.3.64). The tree is put at ``sys.path[0]``
before anything imports ``comfy``; its ``comfy`` is a *namespace* package, so a regular ``comfy``
package installed in the same environment (the 2024 pip package ``comfyui==0.0.1``) would shadow it,
which :func:`ensure_host` refuses.

``ensure_host()`` must run before any ``comfy`` import: it selects CPU mode
(``comfy.cli_args.args.cpu = True``) when no CUDA device exists or ``STORM_TEST_DEVICE=cpu``,
which ComfyUI reads once when ``comfy.model_management`` is first imported; ``STORM_TEST_ATTENTION=pytorch``
likewise selects the host's PyTorch attention (``--use-pytorch-cross-attention``).

``load_pack()`` imports the ComfyUI-STORM pack the way ComfyUI imports a custom-node folder
(``spec_from_file_location`` on its ``__init__.py`` with the folder as package path), under a
synthetic module name so it never collides with the copy that the host's own loader creates in
:mod:`harness.workflows`. The two copies are distinct module objects.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

HARNESS_DIR = Path(__file__).resolve().parent
#: Root of the ComfyUI-STORM checkout (the folder that holds the pack's ``__init__.py``).
REPO_ROOT = HARNESS_DIR.parent
#: Test-only custom-node pack shipped with the harness.
TINY_NODES_DIR = HARNESS_DIR / "tiny_nodes"

#: ``sys.modules`` name of the pack loaded by :func:`load_pack`.
PACK_MODULE_NAME = "comfyui_storm_under_test"

ENV_COMFYUI_PATH = "COMFYUI_PATH"
ENV_DEVICE = "STORM_TEST_DEVICE"
#: ``STORM_TEST_ATTENTION=pytorch``: the host's PyTorch SDPA attention, as ComfyUI runs on an NVIDIA GPU
#: (on the CPU it otherwise picks sub-quadratic attention, whose backward keeps every score chunk)
ENV_ATTENTION = "STORM_TEST_ATTENTION"


class HostSetupError(RuntimeError):
    """The requested ComfyUI host cannot be used (bad path, wrong import order, shadowing)."""


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """The ComfyUI host imported in this process.

    Attributes:
        version: ComfyUI version string (``comfyui_version.__version__``).
        path: the source tree's root.
        cpu: True when ComfyUI was put in CPU mode.
    """

    version: str
    path: Path
    cpu: bool

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """``version`` as numbers (``"0.33.0"`` -> ``(0, 33, 0)``), for tests that name a host version."""
        return tuple(int(part) for part in self.version.split(".") if part.isdigit())


_host: HostInfo | None = None


def ensure_host() -> HostInfo:
    """Select the host, set CPU mode if needed and import ``comfy.model_management`` (idempotent).

    When ComfyUI is already running in this process (``comfy.model_management`` imported, e.g.
    ``tiny_nodes`` loaded by a real server), that host is adopted as it is.

    Raises:
        HostSetupError: ``COMFYUI_PATH`` is unset or does not point at a ComfyUI tree, ``comfy`` comes from
            somewhere else than that tree, or CPU mode can no longer be selected.
    """
    global _host
    if _host is not None:
        return _host

    checkout = _checkout_from_env()
    if "comfy.model_management" in sys.modules:
        info = _adopt_running_host(checkout)
    else:
        if checkout is None:
            raise HostSetupError(
                f"{ENV_COMFYUI_PATH} is not set: point it at a ComfyUI source tree (a git clone of "
                f"https://github.com/Comfy-Org/ComfyUI, or COMFYUI_PATH=$(../shared/hosts/unpack 0.33.0)); "
                f"bash scripts/run_tests.sh sets it for you.")
        _put_checkout_first_on_path(checkout)
        _check_comfy_origin(checkout)
        cpu = _configure_device()
        importlib.import_module("comfy.model_management")
        _import_checkout_utils_first(checkout)
        info = HostInfo(_host_version(checkout), checkout, cpu)
    logger.info("ComfyUI host %s at %s (cpu=%s)", info.version, info.path, info.cpu)
    _host = info
    return info


def load_pack() -> ModuleType:
    """Import the ComfyUI-STORM pack from :data:`REPO_ROOT` like ComfyUI imports a custom node.

    The module is registered as ``sys.modules[PACK_MODULE_NAME]`` and cached; relative imports
    inside the pack (``from .nodes import ...``) resolve under that name.

    Returns:
        The executed pack module (exports ``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS``,
        ``WEB_DIRECTORY``).
    """
    ensure_host()
    cached = sys.modules.get(PACK_MODULE_NAME)
    if cached is not None:
        return cached

    init_file = REPO_ROOT / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        PACK_MODULE_NAME, init_file, submodule_search_locations=[str(REPO_ROOT)]
    )
    if spec is None or spec.loader is None:
        raise HostSetupError(f"cannot create an import spec for the pack at {init_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == PACK_MODULE_NAME or n.startswith(PACK_MODULE_NAME + ".")]:
            del sys.modules[name]
        raise
    logger.info("loaded pack %s from %s", PACK_MODULE_NAME, REPO_ROOT)
    return module


# --------------------------------------------------------------------------------------------
# host selection helpers


def _checkout_from_env() -> Path | None:
    """The tree named by ``COMFYUI_PATH``, validated; None when the variable is unset/empty."""
    raw = os.environ.get(ENV_COMFYUI_PATH, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    required = ("comfy/model_management.py", "nodes.py", "execution.py", "folder_paths.py")
    missing = [r for r in required if not (path / r).is_file()]
    if missing:
        raise HostSetupError(
            f"{ENV_COMFYUI_PATH}={raw!r} is not a ComfyUI source tree ({path} lacks {', '.join(missing)}); "
            f"point it at a git clone of https://github.com/Comfy-Org/ComfyUI."
        )
    return path


def _put_checkout_first_on_path(checkout: Path) -> None:
    entry = str(checkout)
    while entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def _check_comfy_origin(checkout: Path) -> None:
    """Fail early when ``comfy`` would not come from the selected tree."""
    spec = importlib.util.find_spec("comfy")
    if spec is None:
        raise HostSetupError(f"no importable 'comfy' package in the tree {checkout}")
    locations = [Path(p).resolve() for p in (spec.submodule_search_locations or [])]
    if (checkout / "comfy") not in locations or spec.origin not in (None, "namespace"):
        raise HostSetupError(
            f"'comfy' resolves to {spec.origin or locations}, not to {checkout / 'comfy'}: a regular "
            f"'comfy' package (e.g. the 2024 pip package comfyui==0.0.1) shadows the tree's namespace package, "
            f"or 'comfy' was imported before ensure_host(). Use a virtual environment without it."
        )


def _import_checkout_utils_first(checkout: Path) -> None:
    """Import the tree's top-level ``utils`` package as upstream ``main.py`` does.

    Upstream ``nodes.py`` inserts ``<tree>/comfy`` at ``sys.path[0]`` when imported; from then
    on ``import utils`` would find ``comfy/utils.py`` and e.g. ``comfy_extras/nodes_images.py``
    (``from utils.install_util import ...``) fails to import. ``main.py`` imports
    ``utils.extra_config`` before ``nodes``; so do we.
    """
    module = sys.modules.get("utils") or importlib.import_module("utils")
    origin = Path(getattr(module, "__file__", "") or "").resolve()
    if origin != checkout / "utils" / "__init__.py":
        raise HostSetupError(f"top-level 'utils' resolves to {origin}, not to {checkout / 'utils'}; "
                             f"import order differs from ComfyUI's main.py")
    importlib.import_module("utils.extra_config")


def _adopt_running_host(checkout: Path | None) -> HostInfo:
    """Describe the ComfyUI whose ``comfy.model_management`` is already imported."""
    import comfy
    import comfy.model_management as mm

    cpu = mm.cpu_state == mm.CPUState.CPU
    if getattr(comfy, "__file__", None):
        raise HostSetupError(f"'comfy' was imported from the regular package {comfy.__file__} (the 2024 pip "
                             f"package comfyui==0.0.1?), not from a ComfyUI source tree")
    root = Path(list(comfy.__path__)[0]).resolve().parent
    if checkout is not None and root != checkout:
        raise HostSetupError(f"{ENV_COMFYUI_PATH}={checkout} but 'comfy' was already imported from {root}")
    utils = sys.modules.get("utils")
    if utils is not None and Path(getattr(utils, "__file__", "") or "").resolve() != root / "utils" / "__init__.py":
        logger.warning("top-level 'utils' is %s, not the tree's package; comfy_extras that import "
                       "utils.install_util will fail (import order differs from main.py)", utils)
    return HostInfo(_host_version(root), root, cpu)


def comfy_package_dir() -> Path:
    """The ``comfy`` package folder (a namespace package without ``__file__``)."""
    import comfy

    return Path(list(comfy.__path__)[0]).resolve()


def _configure_device() -> bool:
    """Put ComfyUI in CPU mode when required; return whether CPU mode is on."""
    import torch

    forced = os.environ.get(ENV_DEVICE, "").strip().lower() == "cpu"
    cpu = forced or not torch.cuda.is_available()
    import comfy.cli_args

    if cpu and not comfy.cli_args.args.cpu:
        if "comfy.model_management" in sys.modules:
            raise HostSetupError(
                "comfy.model_management was imported before ensure_host() could select CPU mode; "
                "call harness.host.ensure_host() before importing comfy modules."
            )
        comfy.cli_args.args.cpu = True
    if os.environ.get(ENV_ATTENTION, "").strip().lower() == "pytorch":
        if "comfy.model_management" in sys.modules and not comfy.cli_args.args.use_pytorch_cross_attention:
            raise HostSetupError(f"{ENV_ATTENTION}=pytorch needs ensure_host() before comfy.model_management is imported")
        comfy.cli_args.args.use_pytorch_cross_attention = True
    return bool(comfy.cli_args.args.cpu)


def _host_version(checkout: Path) -> str:
    try:
        module = importlib.import_module("comfyui_version")
    except ImportError:
        logger.warning("no comfyui_version module in %s", checkout)
        return "unknown"
    return str(getattr(module, "__version__", "unknown"))
