"""Attention heatmaps of tiny DiTs (SD3, Flux, Chroma; Qwen-Image, Z-Image, Flux.2, Krea 2) through the host's executor
(current ComfyUI only).

The graph a user builds for a DiT: the checkpoint's CLIP into STORM Subject Tokens, its MODEL through
STORM Attention Recorder into the core KSampler (Flux: cfg 1 and FluxGuidance, as Flux is sampled), the
decoded image and the recorder's maps into STORM Attention Heatmap.
"""

import numpy as np
import pytest
from PIL import Image

from harness.tiny_dit import DIT_ARCHS
from harness.workflows import substitute_checkpoints

#: checkpoint name (it picks the tiny architecture), KSampler cfg and scheduler as each family is run
FAMILIES = {"sd3": ("sd3.5_medium.safetensors", 4.5, "sgm_uniform"), "flux": ("flux1-dev.safetensors", 1.0, "simple"),
            "chroma": ("chroma-unlocked-v48.safetensors", 3.5, "beta")}


def heatmap_prompt(arch: str) -> dict:
    ckpt, cfg, scheduler = FAMILIES[arch]
    positive = ["2", 1]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "STORM_SubjectTokens", "inputs": {"clip": ["1", 1], "text": "a cat and a dog",
                                                             "subjects": "cat, dog"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "STORM_AttentionRecorder", "inputs": {"model": ["1", 0],
                                                                  "attention_layers": "1/32 res: down+up (A&E)"}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 96, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": positive, "negative": ["3", 0], "latent_image": ["5", 0], "seed": 7,
            "steps": 4, "cfg": cfg, "sampler_name": "euler", "scheduler": scheduler, "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "STORM_AttentionHeatmap", "inputs": {
            "attention": ["4", 1], "latent": ["6", 0], "tokens": ["2", 0], "show": "subjects",
            "view": "attention", "image": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "storm/dit"}},
    }
    if arch == "flux":
        prompt["10"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 1], "guidance": 3.5}}
        prompt["6"]["inputs"]["positive"] = ["10", 0]
    return substitute_checkpoints(prompt)


@pytest.mark.parametrize("arch", DIT_ARCHS)
def test_heatmaps_of_a_tiny_dit_through_the_executor(arch, runner):
    result = runner.run(heatmap_prompt(arch))
    result.raise_for_error()
    ui = result.outputs_ui["8"]
    assert ui["storm_labels"] == ["cat", "dog"] and ui["storm_log"] == ["no guided steps in this run"]
    overlays = [np.asarray(Image.open(p)) for p in result.file_paths("9")]
    assert [o.shape for o in overlays] == [(64, 96, 3)] * 2
    assert not np.array_equal(overlays[0], overlays[1])  # each subject its own map
    payload = ui["storm_maps"][0]
    assert len(payload["sigmas"]) == 4 and (payload["height"], payload["width"]) == (4, 6)  # per step, per patch


#: families shipped as separate files: UNETLoader, CLIPLoader (its type) and the empty latent their templates use
SEPARATE_FILES = {
    "qwen_image": ("qwen_image_fp8_e4m3fn.safetensors", "qwen_image", "EmptySD3LatentImage", 3.0),
    "z_image": ("z_image_turbo_bf16.safetensors", "lumina2", "EmptySD3LatentImage", 1.0),
    "flux2": ("flux2_klein_4b.safetensors", "flux2", "EmptyFlux2LatentImage", 1.0),
    # Krea 2 Turbo's template: no sampling-shift node, an SD latent made a one-frame 16-channel latent by the sampler
    "krea2": ("krea2_turbo_int8_convrot.safetensors", "krea2", "EmptyLatentImage", 1.0),
}


def separate_files_prompt(arch: str) -> dict:
    """UNETLoader -> ModelSamplingAuraFlow (not for Krea 2) -> STORM Attention Recorder -> core KSampler; CLIPLoader ->
    STORM Subject Tokens; the heatmap over the decoded image (Flux.2: over nothing, the tiny VAE has 16 channels, not 128)."""
    unet, clip_type, empty, cfg = SEPARATE_FILES[arch]
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "11": {"class_type": "CLIPLoader", "inputs": {"clip_name": "text_encoder.safetensors", "type": clip_type,
                                                      "device": "default"}},
        "12": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "2": {"class_type": "STORM_SubjectTokens", "inputs": {"clip": ["11", 0], "text": "a cat and a dog",
                                                             "subjects": "cat, dog"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["11", 0], "text": ""}},
        "4": {"class_type": "STORM_AttentionRecorder", "inputs": {"model": ["12", 0],
                                                                  "attention_layers": "1/32 res: down+up (A&E)"}},
        "5": {"class_type": empty, "inputs": {"width": 96, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["2", 1], "negative": ["3", 0], "latent_image": ["5", 0], "seed": 7,
            "steps": 4, "cfg": cfg, "sampler_name": "res_multistep" if arch == "z_image" else "euler",
            "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "STORM_AttentionHeatmap", "inputs": {
            "attention": ["4", 1], "latent": ["6", 0], "tokens": ["2", 0], "show": "subjects", "view": "attention"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "storm/dit"}},
    }
    if arch == "krea2":
        del prompt["12"]
        prompt["4"]["inputs"]["model"] = ["1", 0]
    if arch != "flux2":
        prompt["13"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
        prompt["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["13", 0]}}
        prompt["8"]["inputs"]["image"] = ["7", 0]
    return substitute_checkpoints(prompt)


@pytest.mark.parametrize("arch", list(SEPARATE_FILES))
def test_heatmaps_of_families_loaded_from_separate_files(arch, runner):
    """Qwen-Image, Z-Image, Flux.2 klein and Krea 2 as their templates load them (diffusion model, text encoder, VAE
    files), the core KSampler after ModelSamplingAuraFlow: each subject's map from the LLM encoder's rows, at the
    image's size (Flux.2: 16 image pixels per latent pixel)."""
    result = runner.run(separate_files_prompt(arch))
    result.raise_for_error()
    ui = result.outputs_ui["8"]
    assert ui["storm_labels"] == ["cat", "dog"] and ui["storm_log"] == ["no guided steps in this run"]
    overlays = [np.asarray(Image.open(p)) for p in result.file_paths("9")]
    assert [o.shape for o in overlays] == [(64, 96, 3)] * 2
    assert not np.array_equal(overlays[0], overlays[1])
    payload = ui["storm_maps"][0]
    assert len(payload["sigmas"]) == 4 and (payload["height"], payload["width"]) == (4, 6)
