"""Which of the host's image model families the pack supports, and the refusal every other one gets.

Each family is the host's own model class (``comfy/supported_models.py``); an unsupported one is refused
with its name before a step is sampled, never taken for a supported family it inherits from (ComfyUI 0.33's
``ChromaRadiance`` subclasses ``Chroma``).
"""

import types

import comfy.supported_models as supported
import pytest
import torch

from harness.nodeutil import call_node
from harness.tiny_dit import build_tiny_dit
from harness.tiny_models import tiny_conditioning

#: the families recording and guidance support, by the pack's family key (the README's family table)
SUPPORTED = {"SD15": "sd1", "SD20": "sd2", "SDXL": "sdxl", "SDXLRefiner": "sdxl_refiner", "SD3": "sd3",
             "Flux": "flux", "FluxSchnell": "flux", "FluxInpaint": "flux", "Chroma": "chroma",
             "QwenImage": "qwen_image", "Flux2": "flux2", "ZImage": "z_image", "Krea2": "krea2"}


def _stub(cls) -> types.SimpleNamespace:
    """A base model of the host class ``cls`` without weights (a DiT's network: no UNet blocks)."""
    return types.SimpleNamespace(model_config=object.__new__(cls), diffusion_model=torch.nn.Module())


def test_every_image_family_of_the_host_is_supported_or_refused_by_name(pack):
    arch = pack.nodes.architecture
    host_classes = {cls.__name__: cls for cls in supported.models}
    named = [name for name in arch.FAMILY_NAMES if name in host_classes]
    assert {"SD15", "SDXL", "SD3", "Flux"} <= set(named)
    for name in named:
        config = object.__new__(host_classes[name])
        if name in SUPPORTED:
            assert arch.model_family(config) == SUPPORTED[name], name
            continue
        with pytest.raises(pack.storm_ops.errors.StormError) as err:
            arch.describe_model(_stub(host_classes[name]), "STORM Guided Sampler")
        message = str(err.value)
        assert err.value.input_name == "model", name
        assert f"{arch.FAMILY_NAMES[name]} models (ComfyUI's {name}) are not supported yet" in message, message
        assert arch.SUPPORTED_FAMILIES in message and "Model families" in message
    assert "Flux.2" in arch.SUPPORTED_FAMILIES and "Z-Image" in arch.SUPPORTED_FAMILIES


def test_subclasses_that_are_other_architectures_are_not_taken_for_their_parents(pack):
    """Flux.2 subclasses Flux.1 in the host, Chroma Radiance Chroma and Z-Image's pixel-space model Z-Image."""
    arch = pack.nodes.architecture
    assert issubclass(supported.ChromaRadiance, supported.Chroma)  # pixel space: another architecture
    assert arch.model_family(object.__new__(supported.ChromaRadiance)) == "other"
    assert arch.model_family(object.__new__(supported.Chroma)) == "chroma"
    assert arch.model_family(object.__new__(supported.FluxSchnell)) == "flux"
    if not hasattr(supported, "Flux2"):
        pytest.skip("this host has no Flux.2 nor Z-Image (ComfyUI 0.3.64)")
    assert issubclass(supported.Flux2, supported.Flux)  # why the order of the checks matters
    assert arch.model_family(object.__new__(supported.Flux2)) == "flux2"
    assert issubclass(supported.ZImagePixelSpace, supported.ZImage)
    assert arch.model_family(object.__new__(supported.ZImagePixelSpace)) == "other"
    assert arch.model_family(object.__new__(supported.ZImage)) == "z_image"
    assert arch.model_family(object.__new__(supported.Lumina2)) == "unet"  # refused: see the test above


def test_an_unsupported_family_is_refused_before_a_step_is_sampled(pack, nodes):
    """A real tiny Flux whose config is made a HiDream one: the Guided KSampler refuses it by name, and the
    network never runs."""
    with torch.inference_mode():
        dit = build_tiny_dit("flux")
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=dit.clip, text="a cat and a dog",
                                        subjects="cat, dog")
        negative = tiny_conditioning(dit.clip, "")
        (guidance,) = call_node(nodes["STORM_AttendAndExcite"], tokens=tokens, step_size=20.0, start_at=0.0,
                                end_at=1.0, thresholds="", max_refine_iters=0)
    base = dit.model.model
    hidream = object.__new__(supported.HiDream)
    hidream.__dict__.update(base.model_config.__dict__)
    base.model_config = hidream
    calls = []
    base.diffusion_model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(Exception) as err:
        call_node(nodes["STORM_GuidedKSampler"], model=dit.model, guidance=guidance, seed=1, steps=3, cfg=1.0,
                  sampler_name="euler", scheduler="simple", positive=positive, negative=negative,
                  latent_image={"samples": torch.zeros(1, 16, 8, 12)})
    assert "HiDream models (ComfyUI's HiDream) are not supported yet" in str(err.value)
    assert "STORM Guided KSampler" in str(err.value)
    assert calls == []
