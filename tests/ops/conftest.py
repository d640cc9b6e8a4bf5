"""Fixtures shared by the ops tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: tiny problems only gain contention from more on shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
