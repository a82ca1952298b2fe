"""Shared test setup.

Under pytest-xdist each worker gets one intra-op thread: two workers with two threads each on a
2-core machine oversubscribe the CPU and run several times slower than one thread each.
"""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
