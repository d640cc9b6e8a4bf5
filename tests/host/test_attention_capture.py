"""Layer selection by UNet level and attn2 recording patches on the real UNets."""

import json

import comfy.sample
import comfy.samplers
import pytest
import torch

from harness.nodeutil import node_output


def sample(model, cond, neg, latent, steps=3, sampler="euler", seed=0):
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, 7.5, sampler, "normal", cond, neg, latent, seed=seed,
                                   disable_pbar=True)


def test_ae_level_is_the_paper_layers_on_sd15_and_the_comparable_sdxl_level(pack, tiny):
    arch = pack.nodes.architecture
    sd15 = arch.describe_unet(tiny("sd15").model.model)
    assert sd15.family == "sd1"
    assert [layer.key for layer in sd15.select()] == [("input", 7), ("input", 8), ("output", 3), ("output", 4),
                                                      ("output", 5)]
    assert all(layer.depth == 1 and layer.heads == 8 for layer in sd15.select())
    sdxl = arch.describe_unet(tiny("sdxl").model.model)
    assert sdxl.family == "sdxl"
    assert [layer.key for layer in sdxl.select()] == [("input", 7), ("input", 8), ("output", 0), ("output", 1),
                                                      ("output", 2)]
    assert all(layer.depth == 10 for layer in sdxl.select())
    with_mid = sdxl.select("1/32 res: down+mid+up")
    assert ("middle", 0) in [layer.key for layer in with_mid]
    assert ("middle", 0) not in [layer.key for layer in sd15.select("1/32 res: down+mid+up")]  # 1/64 res on SD1
    assert [layer.key for layer in sd15.select("1/16 res: down+up")] == [("input", 4), ("input", 5), ("output", 6),
                                                                         ("output", 7), ("output", 8)]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_recorder_does_not_change_the_image_and_records_probabilities(nodes, tiny, encode, arch):
    tm = tiny(arch)
    cond, neg = encode(tm.clip, "a cat and a dog"), encode(tm.clip, "")
    latent = torch.zeros(1, 4, 24, 40)  # non-square; 24 x 40 -> level-2 maps 6 x 10
    with torch.inference_mode():
        patched, history = nodes["STORM_AttentionRecorder"]().patch(model=tm.model,
                                                                    attention_layers="1/32 res: down+up (A&E)")
    plain = sample(tm.model, cond, neg, latent)
    recorded = sample(patched, cond, neg, latent)
    assert torch.equal(plain, recorded)
    record = history.latest()
    assert len(record.step_maps) == 3  # one conditional evaluation per euler step
    maps = record.mean_maps(77)
    assert maps.shape == (1, 77, 6, 10)
    assert torch.allclose(maps.sum(1), torch.ones(1, 6, 10), atol=2e-3)  # probabilities (fp16 storage)
    assert record.final_latent is not None


def test_recorder_chains_to_an_existing_replace_patch(pack, nodes, tiny, encode):
    tm = tiny("sd15")
    cond, neg = encode(tm.clip, "a cat"), encode(tm.clip, "")
    calls = []
    host_attention = pack.nodes.compat.host_attention

    def other_pack_patch(q, k, v, extra_options):  # e.g. an IP-Adapter-style patch
        calls.append(extra_options["block"])
        return host_attention(q, k, v, extra_options["n_heads"], extra_options) * 0.5

    other = tm.model.clone()
    other.set_model_attn2_replace(other_pack_patch, "output", 3)
    with torch.inference_mode():
        patched, history = nodes["STORM_AttentionRecorder"]().patch(model=other,
                                                                    attention_layers="1/32 res: down+up (A&E)")
    latent = torch.zeros(1, 4, 32, 32)
    expected = sample(other, cond, neg, latent, steps=2)
    calls.clear()
    got = sample(patched, cond, neg, latent, steps=2)
    assert calls and all(b == ("output", 3) for b in calls)  # the other patch still runs
    assert torch.equal(expected, got)  # and its output is what the layer returns
    assert len(history.latest().step_maps) == 2
    assert "storm" not in repr(tm.model.model_options)  # the input model was not patched


def test_recorder_folds_lcm_tiled_conditioning(nodes, tiny, encode):
    tm = tiny("sd15")
    cond = encode(tm.clip, "a cat and a dog")
    long_negative = encode(tm.clip, ", ".join(["blurry low quality"] * 30))
    assert long_negative[0][0].shape[1] == 154
    with torch.inference_mode():
        patched, history = nodes["STORM_AttentionRecorder"]().patch(model=tm.model,
                                                                    attention_layers="1/32 res: down+up (A&E)")
    sample(patched, cond, long_negative, torch.zeros(1, 4, 32, 32), steps=2)
    record = history.latest()
    assert record.step_maps[0][1].shape[1] == 154  # the cond was tiled to the lcm (2 x 77)
    folded = record.mean_maps(77)
    assert torch.allclose(folded.sum(1), torch.ones_like(folded.sum(1)), atol=2e-3)


def test_each_run_is_a_new_record(nodes, tiny, encode):
    tm = tiny("sd15")
    cond, neg = encode(tm.clip, "a cat"), encode(tm.clip, "")
    with torch.inference_mode():
        patched, history = nodes["STORM_AttentionRecorder"]().patch(model=tm.model,
                                                                    attention_layers="1/32 res: down+up (A&E)")
    a = sample(patched, cond, neg, torch.zeros(1, 4, 32, 32), steps=2, seed=1)
    b = sample(patched, cond, neg, torch.zeros(1, 4, 32, 32), steps=2, seed=2)
    assert len(history.runs) == 2
    first, second = history.runs
    assert history.find({"samples": a}) is first and history.find({"samples": b}) is second
    assert not torch.equal(first.mean_maps(77), second.mean_maps(77))


def test_latents_name_their_run_and_a_stale_name_is_ignored(pack):
    cap = pack.nodes.attention_capture
    history = cap.AttentionHistory("STORM Guided KSampler")
    info = pack.storm_ops.guidance.run_log.RunInfo("STORM Guided KSampler", "SD15", "sd15")
    first, second = cap.RunRecord(info), cap.RunRecord(info)
    first.final_latent, second.final_latent = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    history.add(first)
    history.add(second)
    samples = torch.randn(1, 4, 8, 8)  # the values of neither run: only the name can find it
    tagged = cap.tag_latent({"samples": samples}, first, "STORM Guided KSampler")
    assert history.find(tagged) is first
    assert history.find({"samples": samples}) is None
    # a node downstream replaced the samples but copied the dict: the name no longer applies
    stale = dict(tagged, samples=second.final_latent / 0.18215)
    assert history.find(stale) is second
    other = cap.AttentionHistory("STORM Attention Recorder")
    assert other.find(tagged) is None
    assert "produced by STORM Guided KSampler" in other.miss_message(tagged)


def test_every_sampling_call_is_its_own_run_even_when_it_starts_where_the_last_stopped(nodes, tiny, encode):
    tm = tiny("sd15")
    cond, neg = encode(tm.clip, "a cat"), encode(tm.clip, "")
    with torch.inference_mode():
        patched, history = nodes["STORM_AttentionRecorder"]().patch(model=tm.model, attention_layers="1/32 res: down+up (A&E)")
    latent = torch.zeros(1, 4, 32, 32)
    noise = comfy.sample.prepare_noise(latent, 0)
    with torch.inference_mode():  # an interrupted first run: one step at the highest sigma
        comfy.sample.sample(patched, noise, 6, 7.5, "euler", "normal", cond, neg, latent, last_step=1,
                            disable_pbar=True)
    full = sample(patched, cond, neg, latent, steps=6)  # starts at that same sigma
    assert [len(r.step_maps) for r in history.runs] == [1, 6]
    assert history.find({"samples": full}) is history.runs[1]


def test_save_attention_writes_the_run_as_safetensors(pack, nodes, tiny, encode, tmp_path):
    from safetensors import safe_open

    tm = tiny("sd15")
    with torch.inference_mode():
        tokens, cond, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a cat and a dog",
                                                                         subjects="cat, dog"))
        patched, history = nodes["STORM_AttentionRecorder"]().patch(model=tm.model,
                                                                    attention_layers="1/32 res: down+up (A&E)")
    samples = sample(patched, cond, encode(tm.clip, ""), torch.zeros(1, 4, 32, 32), steps=3)
    paths = pack.nodes.compat.folder_paths()
    previous = paths.get_output_directory()
    paths.set_output_directory(str(tmp_path))
    try:
        relative = node_output(nodes["STORM_SaveAttention"]().save(
            attention=history, latent={"samples": samples}, filename_prefix="storm/maps", tokens=tokens))[0]
    finally:
        paths.set_output_directory(previous)
    record = history.latest()
    with safe_open(str(tmp_path / relative), framework="pt") as f:
        meta = f.metadata()
        maps, sigmas = f.get_tensor("maps"), f.get_tensor("sigmas")
        final = f.get_tensor("final_latent")
    assert maps.shape == (3, 1, 77, 8, 8) and maps.dtype == torch.float16
    assert torch.equal(maps[1], record.step_maps[1][1])
    assert sigmas.tolist() == pytest.approx([s for s, _ in record.step_maps])
    assert torch.equal(final, record.final_latent)
    assert meta["format"] == pack.nodes.nodes_attention.ATTENTION_FILE_FORMAT and meta["run_id"] == record.run_id
    assert json.loads(meta["tokens"])[2] == "cat" and json.loads(meta["subjects"]) == {"cat": [2], "dog": [5]}
    assert json.loads(meta["info"])["node"] == "STORM Attention Recorder"
