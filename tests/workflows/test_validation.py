"""Mistakes in a node's widget text are reported when the prompt is queued: the host's
``validate_prompt`` calls the node's ``VALIDATE_INPUTS``, so the frontend marks the node and input
before any node runs (a prompt validation error, not an execution error)."""

import pytest

from harness.workflows import example_path, load_ui_workflow, substitute_checkpoints, ui_to_api


@pytest.fixture
def ae_prompt(runner):
    """The Attend-and-Excite example as the frontend submits it, and the id of its A&E node."""
    ui = load_ui_workflow(example_path("attend_and_excite"))
    prompt = substitute_checkpoints(ui_to_api(ui, runner.node_defs()))
    ae = next(node_id for node_id, node in prompt.items() if node["class_type"] == "STORM_AttendAndExcite")
    loader = next(node_id for node_id, node in prompt.items() if node["class_type"] == "STORMTest_TinyCheckpointLoader")
    return prompt, ae, loader


def _custom_errors(node_errors, node_id):
    return [e for e in node_errors[node_id]["errors"] if e["type"] == "custom_validation_failed"]


def test_the_example_passes_validation(runner, ae_prompt):
    prompt, _, _ = ae_prompt
    assert runner.validate(prompt) == (True, None, {})


def test_bad_thresholds_are_a_validation_error_and_nothing_runs(runner, ae_prompt):
    prompt, ae, _ = ae_prompt
    prompt[ae]["inputs"]["thresholds"] = "0:0.05, 0.2"
    result = runner.run(prompt)
    assert not result.success and result.error.startswith("prompt validation failed")
    assert result.executed_nodes == [] and result.status_messages == []  # not an execution error
    errors = _custom_errors(result.node_errors, ae)
    assert [e["extra_info"]["input_name"] for e in errors] == ["thresholds"]
    assert "STORM Attend-and-Excite: input 'thresholds': cannot read refinement threshold '0.2'" in errors[0]["details"]


def test_bad_pipeline_is_a_validation_error(runner, ae_prompt):
    prompt, ae, loader = ae_prompt
    prompt["900"] = {"class_type": "STORM_PromptAnalysis",
                     "inputs": {"clip": [loader, 1], "text": "a cat and a dog", "parser": "auto", "pipeline": "os"}}
    prompt[ae]["inputs"]["thresholds"] = ["900", 3]  # the analysis' text output, so it is validated too
    ok, text, node_errors = runner.validate(prompt)
    assert not ok
    errors = _custom_errors(node_errors, "900")
    assert [e["extra_info"]["input_name"] for e in errors] == ["pipeline"]
    assert "STORM Prompt Analysis: input 'pipeline': 'os' is not the name of an installed" in errors[0]["details"]


def test_linked_text_is_left_to_the_node_and_the_hosts_own_checks_stay_on(runner, ae_prompt):
    """A linked thresholds input reaches VALIDATE_INPUTS as None and passes; declaring VALIDATE_INPUTS
    does not switch off the host's range check of the node's other inputs."""
    prompt, ae, loader = ae_prompt
    prompt["900"] = {"class_type": "STORM_PromptAnalysis",
                     "inputs": {"clip": [loader, 1], "text": "a cat and a dog", "parser": "rules"}}
    prompt[ae]["inputs"]["thresholds"] = ["900", 3]
    assert runner.validate(prompt)[0]
    prompt[ae]["inputs"]["step_size"] = 501.0
    ok, _, node_errors = runner.validate(prompt)
    assert not ok
    assert [e["type"] for e in node_errors[ae]["errors"]] == ["value_bigger_than_max"]
