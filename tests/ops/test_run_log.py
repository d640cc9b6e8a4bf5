"""The typed log of a guided run and its one JSON form (storm_ops.guidance.run_log)."""

import json
from types import SimpleNamespace

import torch

from storm_ops.guidance.run_log import GuidedStep, RunInfo, numbers, refinement_hint


def _report(refine_cap=0, satisfied=(True, False), skipped=()):
    first = SimpleNamespace(objective=torch.tensor([0.5, float("nan")]), term_losses={"attend_excite": torch.tensor([0.5, 0.25])})
    last = SimpleNamespace(objective=torch.tensor([0.25, 0.125]), term_losses={"attend_excite": torch.tensor([0.25, 0.125])},
                           satisfied=torch.tensor(satisfied), metrics={"attend_excite.max_attention": torch.tensor([[0.5, 0.75]])})
    return SimpleNamespace(first=first, last=last, refine_iters=2 if refine_cap else 0, refine_cap=refine_cap,
                           sample_refine_iters=torch.tensor([2, 0]) if refine_cap else torch.zeros(2, dtype=torch.long),
                           updates=3 if refine_cap else 1, skipped=list(skipped))


def test_the_json_form_is_the_documented_one_and_reads_back():
    step = GuidedStep.of(4, 3.14159265, _report(refine_cap=5, skipped=("sample 1: non-finite loss",)))
    data = json.loads(json.dumps(step.to_json()))
    assert data == {
        "step": 4, "sigma": 3.141593, "loss_before": [0.5, "nan"], "loss_after": [0.25, 0.125],
        "terms_before": {"attend_excite": [0.5, 0.25]}, "terms_after": {"attend_excite": [0.25, 0.125]},
        "refine_iters": 2, "refine_iters_per_sample": [2, 0], "updates": 3, "refine_cap": 5,
        "threshold_reached": [True, False], "attend_excite.max_attention": [0.5, 0.75],
        "skipped": ["sample 1: non-finite loss"]}
    assert GuidedStep.from_json(data) == step and step.updated


def test_a_step_without_refinement_leaves_its_keys_out():
    data = GuidedStep.of(0, 1.0, _report()).to_json()
    assert "refine_cap" not in data and "threshold_reached" not in data and "skipped" not in data
    assert GuidedStep.from_json(data).threshold_reached is None


def test_numbers_round_and_spell_non_finite_values():
    assert numbers(torch.tensor([1 / 3, float("inf")])) == [0.333333, "inf"]


def test_the_refinement_hint_names_the_samples_that_never_reached_the_threshold():
    never = [GuidedStep.of(i, 1.0, _report(refine_cap=5, satisfied=(True, False))) for i in range(2)]
    assert "of sample(s) [1]" in refinement_hint(never) and "lower max_refine_iters" in refinement_hint(never)
    reached = [GuidedStep.of(0, 1.0, _report(refine_cap=5, satisfied=(True, True)))]
    assert refinement_hint(reached) is None and refinement_hint([GuidedStep.of(0, 1.0, _report())]) is None


def test_run_info_leaves_unset_fields_out_of_its_json():
    info = RunInfo("STORM Guided KSampler", "SD15", "sd15", ["1/32 down 4"], steps=20, guided_steps=[0, 1])
    data = info.to_json()
    assert data["node"] == "STORM Guided KSampler" and data["guided_steps"] == [0, 1] and "chunk" not in data
