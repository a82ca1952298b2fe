"""Shared test setup.

Under pytest-xdist each worker gets one intra-op thread: two workers with two threads each on a
2-core machine oversubscribe the CPU and run several times slower than one thread each.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only cost time (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
