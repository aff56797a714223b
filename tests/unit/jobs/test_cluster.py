"""Cluster connection: the local cluster's shape, and SLURM clusters built from a config."""

from __future__ import annotations

import pytest

from thresher.exceptions import ParameterError
from thresher.jobs.cluster import local_shape, make_slurm_cluster


@pytest.mark.parametrize("cores, expected", [(1, (1, 1)), (2, (1, 2)), (4, (1, 4)), (16, (4, 4)), (64, (16, 4))])
def test_local_shape_never_splits_few_cores_across_processes(cores, expected):
    shape = local_shape(cores=cores)
    assert (shape.n_workers, shape.cores_per_worker) == expected


def test_local_shape_with_explicit_workers_and_bad_value():
    assert local_shape(2, cores=2).cores_per_worker == 1
    with pytest.raises(ParameterError, match="'workers'"):
        local_shape(0, cores=2)


def test_slurm_cluster_from_yaml_writes_the_expected_job_script(tmp_path):
    config = tmp_path / "slurm.yaml"
    config.write_text(
        "queue: gpu\naccount: curation\ncores: 8\nmemory: 64GB\nwalltime: '04:00:00'\n"
        "job_extra_directives: ['--gres=gpu:1']\nscheduler_options: {dashboard_address: ':0'}\n"
    )
    cluster = make_slurm_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A curation", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1"):
        assert line in script
    assert "distributed.cli.dask_worker" in script or "dask-worker" in script or "distributed.cli.dask_spec" in script


def test_bad_slurm_config_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParameterError, match="bad.yaml"):
        make_slurm_cluster(bad)
    with pytest.raises(ParameterError, match="names .no_such_option., not an argument of dask_jobqueue.SLURMCluster"):
        make_slurm_cluster({"no_such_option": 1})
