"""Shared fixtures. Importing benchmark first applies the torchvision CPU shim."""
import os

import benchmark  # noqa: F401
import pytest
import torch

# Tests must not write into a user's cache; each session gets its own.
@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    if "PURIFYBENCH_CACHE" not in os.environ:
        os.environ["PURIFYBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
