"""Workflow tier: every example workflow executed by the host's own executor (in process), with
a test-only loader that substitutes tiny models for checkpoints."""

import pytest

from harness.host import ensure_host

HOST = ensure_host()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/workflows" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.workflow)


@pytest.fixture(scope="session")
def runner():
    from harness.workflows import get_runner

    return get_runner()
