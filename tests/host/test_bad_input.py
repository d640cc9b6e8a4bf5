"""Bad input gives an error naming the node and the input, never a traceback from inside torch."""

import re

import comfy.sample
import comfy.samplers
import pytest
import torch

from harness.nodeutil import node_output
from harness.tiny_models import build_tiny_unet

LAYERS = "1/32 res: down+up (A&E)"
NO_CROSS_ATTENTION = {"transformer_depth": [0] * 8, "transformer_depth_output": [0] * 12,
                      "transformer_depth_middle": -1}


@pytest.fixture(scope="module")
def prompt(cat_and_dog):
    return cat_and_dog()


def ksample(nodes, model, guidance, pos, neg, hw=(16, 16)):
    with torch.inference_mode():
        return nodes["STORM_GuidedKSampler"]().sample(model=model, guidance=guidance, seed=0, steps=2, cfg=7.5,
                                                      sampler_name="euler", scheduler="normal", positive=pos,
                                                      negative=neg, latent_image={"samples": torch.zeros(1, 4, *hw)},
                                                      denoise=1.0, attention_layers=LAYERS)


def test_model_without_cross_attention(nodes, prompt):
    _, _, pos, neg, guidance = prompt
    with torch.inference_mode():
        model = build_tiny_unet("sd15", unet_overrides=NO_CROSS_ATTENTION)
    with pytest.raises(Exception, match=r"STORM Guided KSampler: input 'model':.*no cross-attention layers"):
        ksample(nodes, model, guidance, pos, neg)
    with pytest.raises(Exception, match=r"STORM Attention Recorder: input 'model':.*no cross-attention"):
        nodes["STORM_AttentionRecorder"]().patch(model=model, attention_layers=LAYERS)


class _IsolatedModelProxy:
    """What a process-isolated custom node receives for a MODEL: a stand-in for an object in another process."""

    def __getattr__(self, name):
        raise RuntimeError(f"remote attribute {name!r} is not available here")


def test_a_model_from_process_isolated_nodes_is_refused_by_name(nodes, prompt):
    _, _, pos, neg, guidance = prompt
    proxy = _IsolatedModelProxy()
    message = r"input 'model':.*not ComfyUI's ModelPatcher.*without custom-node isolation"
    with pytest.raises(Exception, match="STORM Guided KSampler: " + message):
        ksample(nodes, proxy, guidance, pos, neg)
    with pytest.raises(Exception, match="STORM Attention Recorder: " + message):
        nodes["STORM_AttentionRecorder"]().patch(model=proxy, attention_layers=LAYERS)


def test_the_isolation_overlay_is_named_when_the_pack_loads(pack, monkeypatch):
    compat = pack.nodes.compat
    monkeypatch.delenv(compat.ISOLATION_OVERLAY, raising=False)
    assert compat.isolation_notice() is None
    monkeypatch.setenv(compat.ISOLATION_OVERLAY, "vendor.sandbox")
    assert "'vendor.sandbox'" in compat.isolation_notice() and "own process" in compat.isolation_notice()


def test_positive_prompt_of_another_length(nodes, prompt, encode):
    tm, _, _, neg, guidance = prompt
    long_positive = encode(tm.clip, ", ".join(["a cat and a dog"] * 30))
    with pytest.raises(Exception, match=r"STORM Guided KSampler: input 'positive':.*has 231 token columns.*prompt with 77"):
        ksample(nodes, tm.model, guidance, long_positive, neg)


def test_combined_positive_conditioning(nodes, prompt):
    tm, _, pos, neg, guidance = prompt
    combined = pos + pos  # what ConditioningCombine produces
    with pytest.raises(Exception, match=r"input 'positive':.*2 entries"):
        ksample(nodes, tm.model, guidance, combined, neg)


def test_guided_sampler_inside_sampler_custom_reports_its_own_name(nodes, prompt):
    tm, _, pos, neg, guidance = prompt
    with torch.inference_mode():
        sampler, _ = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                          attention_layers=LAYERS)
        model = build_tiny_unet("sd15", unet_overrides=NO_CROSS_ATTENTION)
        sigmas = comfy.samplers.KSampler(model, steps=2, device=model.load_device, sampler="euler",
                                         scheduler="normal", model_options=model.model_options).sigmas
        latent = torch.zeros(1, 4, 16, 16)
        with pytest.raises(Exception, match=r"^STORM Guided Sampler: input 'model'"):
            comfy.sample.sample_custom(model, torch.randn_like(latent), 7.5, sampler, sigmas, pos, neg, latent,
                                       disable_pbar=True, seed=0)


def test_bad_widget_values(nodes, prompt):
    _, tokens, _, _, guidance = prompt
    build = nodes["STORM_AttendAndExcite"]().build
    with pytest.raises(Exception, match=r"STORM Attend-and-Excite: input 'thresholds':.*'0.2'"):
        build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5, thresholds="0.2", max_refine_iters=5,
              smoothing=True, end_tokens="auto")
    with pytest.raises(Exception, match=r"STORM Attend-and-Excite: input 'end_at'"):
        build(tokens=tokens, step_size=20.0, start_at=0.6, end_at=0.5, thresholds="", max_refine_iters=5,
              smoothing=True, end_tokens="auto")
    with pytest.raises(Exception, match=r"STORM Guided Sampler: input 'sampler_name'"):
        nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="dpm_fast", attention_layers=LAYERS)


def test_losses_from_different_prompts_cannot_be_chained(nodes, prompt, tiny):
    tm, _, _, _, guidance = prompt
    long_prompt = "a cat and " + ", ".join(["a dog"] * 40)
    with torch.inference_mode():
        other = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text=long_prompt, subjects="cat"))[0]
    with pytest.raises(Exception, match=r"STORM Attend-and-Excite: input 'guidance':.*same prompt"):
        nodes["STORM_AttendAndExcite"]().build(tokens=other, step_size=20.0, start_at=0.0, end_at=0.5, thresholds="",
                                               max_refine_iters=5, smoothing=True, end_tokens="auto", guidance=guidance)


LOSS_NODES = ("STORM_AttendAndExcite", "STORM_SynGen", "STORM_AStar", "STORM_SpatialTransport")


def _numeric_inputs(cls):
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if spec[0] in ("INT", "FLOAT"):
                yield name, spec[1]


def _default_arguments(cls):
    """Widget defaults; None for sockets (the range check runs before any socket is read)."""
    types = cls.INPUT_TYPES()
    return {name: spec[1].get("default") if len(spec) > 1 else None
            for section in ("required", "optional") for name, spec in types.get(section, {}).items()}


def test_linked_step_size_far_outside_the_widget_range(nodes, prompt):
    """ComfyUI checks min/max only for typed widget values; 1e6 through a link must not explode the latent."""
    _, tokens, _, _, _ = prompt
    build = nodes["STORM_AttendAndExcite"]().build
    with pytest.raises(Exception, match=r"^STORM Attend-and-Excite: input 'step_size' = 1000000 is outside its "
                                        r"range \[0, 500\]"):
        build(tokens=tokens, step_size=1e6, start_at=0.0, end_at=0.5, thresholds="", max_refine_iters=5, smoothing=True,
              end_tokens="auto")
    with pytest.raises(Exception, match=r"^STORM Attend-and-Excite: input 'sigma' = nan is outside its range"):
        build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5, thresholds="", max_refine_iters=5,
              smoothing=True, end_tokens="auto", sigma=float("nan"))
    build(tokens=tokens, step_size=500.0, start_at=0.0, end_at=0.5, thresholds="", max_refine_iters=5, smoothing=True,
          end_tokens="auto", weight=100.0)  # the bounds themselves are fine


@pytest.mark.parametrize("node_id", LOSS_NODES)
def test_every_numeric_input_of_a_loss_node_is_checked_against_its_declared_range(nodes, node_id):
    cls = nodes[node_id]
    checked = 0
    for name, options in _numeric_inputs(cls):
        for bad in (options["max"] * 2 + 1, options["min"] - 1):
            kwargs = {**_default_arguments(cls), name: bad}
            with pytest.raises(Exception, match=rf"^{re.escape(cls.NODE_NAME)}: input '{name}' = \S+ is outside "
                                                rf"its range \[{options['min']:g}, {options['max']:g}\]"):
                getattr(cls(), cls.FUNCTION)(**kwargs)
            checked += 1
    assert checked >= 6


# Text-widget errors found by VALIDATE_INPUTS, i.e. when the prompt is queued, before anything runs.
VALIDATION_CASES = [
    ("STORM_AttendAndExcite", "thresholds", "0.2", r"input 'thresholds':.*'0\.2'"),
    ("STORM_AttendAndExcite", "thresholds", "0:0.05, 0.2:1.5", r"input 'thresholds': threshold 1\.5"),
    ("STORM_AStar", "thresholds", "a:b", r"input 'thresholds':.*'a:b'"),
    ("STORM_SpatialTransport", "thresholds", "0.1-0.9", r"input 'thresholds':.*'0\.1-0\.9'"),
    ("STORM_PromptAnalysis", "subjects", ", ;", r"input 'subjects':.*no subjects"),
    ("STORM_PromptAnalysis", "subjects", "cat, dog#0", r"input 'subjects':.*'dog#0'.*count from 1"),
    ("STORM_PromptAnalysis", "subjects", "dog, Dog#1", r"input 'subjects':.*same tokens"),
    ("STORM_PromptAnalysis", "bindings", "red crown", r"input 'bindings':.*'modifier, modifier -> noun'"),
    ("STORM_PromptAnalysis", "bindings", "-> crown", r"input 'bindings':.*at least one modifier"),
    ("STORM_PromptAnalysis", "bindings", "red -> crown#0", r"input 'bindings':.*'crown#0'.*count from 1"),
    ("STORM_PromptAnalysis", "relations", "cat dog", r"input 'relations':.*no relation word"),
    ("STORM_PromptAnalysis", "relations", "cat left of", r"input 'relations':.*an object on each side"),
    ("STORM_PromptAnalysis", "relations", "cat in front of dog", r"input 'relations':.*depth"),
    ("STORM_PromptAnalysis", "relations", "cat#0 above dog", r"input 'relations':.*'cat#0'.*count from 1"),
    ("STORM_PromptAnalysis", "pipeline", "os", r"input 'pipeline': 'os' is not .*installed"),
    ("STORM_PromptAnalysis", "pipeline", "/tmp", r"input 'pipeline': '/tmp' is not .*installed"),
]
VALID_TEXT = {
    "STORM_AttendAndExcite": {"thresholds": "0:0.05, 0.2:0.5, 0.4:0.8"},
    "STORM_AStar": {"thresholds": ""},
    "STORM_SpatialTransport": {"thresholds": "0:0.9, 0.1:0.95"},
    "STORM_PromptAnalysis": {"subjects": "cat, dog#2, 5", "bindings": "red, shiny -> crown; golden -> strawberry#2",
                             "relations": "the cat left of a dog; bird above cat", "pipeline": ""},
}


@pytest.mark.parametrize(("node_id", "name", "value", "pattern"), VALIDATION_CASES)
def test_text_widget_errors_are_found_by_validate_inputs(nodes, node_id, name, value, pattern):
    cls = nodes[node_id]
    result = cls.VALIDATE_INPUTS(**{name: value})
    assert isinstance(result, str), result
    assert re.search(rf"^{re.escape(cls.NODE_NAME)}: {pattern}", result), result


@pytest.mark.parametrize("node_id", sorted(VALID_TEXT))
def test_validate_inputs_passes_good_linked_and_absent_values(nodes, node_id):
    import inspect

    cls = nodes[node_id]
    good = VALID_TEXT[node_id]
    assert cls.VALIDATE_INPUTS(**good) is True
    assert cls.VALIDATE_INPUTS(**{name: None for name in good}) is True  # linked: the host passes None
    assert cls.VALIDATE_INPUTS() is True  # not in the prompt at all
    types = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
    defaults = {name: types[name][1]["default"] for name in good}
    assert cls.VALIDATE_INPUTS(**defaults) is True
    # Only text widgets are named: the hosts skip their own range / list / type checks for the inputs
    # VALIDATE_INPUTS names (upstream: and for all of them with **kwargs or an 'input_types' argument).
    spec = inspect.getfullargspec(cls.VALIDATE_INPUTS)
    assert spec.varkw is None and "input_types" not in spec.args
    assert all(types[name][0] == "STRING" for name in spec.args[1:])
