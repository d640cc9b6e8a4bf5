"""Attention heatmaps of tiny SD3, Flux and Chroma models through the host's executor (current ComfyUI only).

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
