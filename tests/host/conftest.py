"""Host tier: the real ComfyUI ``comfy.*`` modules (the ``COMFYUI_PATH`` source tree),
tiny SD1.5/SDXL-topology models and the pack loaded the way ComfyUI loads it.

Everything a test does with the host runs under ``torch.inference_mode()``, as ComfyUI's
executor runs nodes; the tiny models are built in inference mode too, so their weights are
inference tensors, exactly like weights loaded by a checkpoint loader node.
"""

import pytest
import torch

from harness.host import ensure_host, load_pack

# Select and configure the host (CPU mode, sys.path) before any test module imports ``comfy``.
HOST = ensure_host()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/host" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def host():
    return HOST


@pytest.fixture(scope="session")
def pack(host):
    """The ComfyUI-STORM package as ComfyUI loads it (module with NODE_CLASS_MAPPINGS, .nodes, .storm_ops)."""
    return load_pack()


@pytest.fixture(scope="module", autouse=True)
def _private_temp_directory(pack, tmp_path_factory):
    """Previews written by nodes go to a temporary folder, not the host's default (the cwd)."""
    paths = pack.nodes.compat.folder_paths()
    previous = paths.get_temp_directory()
    paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy-temp")))
    yield
    paths.set_temp_directory(previous)


@pytest.fixture(scope="session")
def nodes(pack):
    """Node classes by id."""
    return pack.NODE_CLASS_MAPPINGS


_TINY: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _release_models():
    """Drop the cached models before interpreter shutdown (upstream's ModelPatcher.__del__ needs
    its module globals, which are gone at exit)."""
    yield
    _TINY.clear()
    import gc

    gc.collect()


@pytest.fixture(scope="session")
def tiny(host):
    """``tiny(arch)`` -> a cached TinyModel (model, clip, vae) built under inference mode."""
    from harness.tiny_models import build_tiny

    def get(arch: str = "sd15"):
        if arch not in _TINY:
            with torch.inference_mode():
                _TINY[arch] = build_tiny(arch)
        return _TINY[arch]

    return get


@pytest.fixture(scope="session")
def encode(host):
    """``encode(clip, text)`` -> CONDITIONING exactly as the host's CLIPTextEncode builds it."""
    from harness.tiny_models import tiny_conditioning

    def run(clip, text):
        with torch.inference_mode():
            return tiny_conditioning(clip, text)

    return run


@pytest.fixture(scope="session")
def cat_and_dog(nodes, tiny, encode):
    """``cat_and_dog(negative="", **ae)`` -> ``(tiny sd15, tokens, positive, negative, A&E guidance)`` for the
    prompt "a cat and a dog" with subjects cat and dog; ``ae`` overrides the A&E widgets (step 20 until 0.5,
    no refinement by default)."""
    from harness.nodeutil import node_output

    def make(negative: str = "", **ae):
        tm = tiny("sd15")
        settings = dict(step_size=20.0, start_at=0.0, end_at=0.5, thresholds="", max_refine_iters=0, smoothing=True,
                        end_tokens="auto") | ae
        with torch.inference_mode():
            tokens, cond, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a cat and a dog",
                                                                             subjects="cat, dog"))
            (guidance,) = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, **settings)
        return tm, tokens, cond, encode(tm.clip, negative), guidance

    return make
