"""What the SLURM job keeper says, checked without a SLURM cluster (tests/integration/test_slurm.py runs one)."""

from __future__ import annotations

import asyncio

import pytest
from dask_jobqueue.core import Job

from thresher.exceptions import ParameterError
from thresher.jobs.slurm import WorkerJob, sbatch_message, slurm_client


def test_sbatch_message_is_sbatchs_stderr_on_one_line():
    # dask-jobqueue's own command runner, on a command that fails the way sbatch does
    failing = ["sh", "-c", "echo 'sbatch: error: invalid partition specified: nope' >&2; "
                           "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1"]
    with pytest.raises(RuntimeError) as error:
        asyncio.run(Job._call(failing))
    assert sbatch_message(error.value) == "invalid partition specified: nope; Batch job submission failed: Invalid partition name specified"
    with pytest.raises(FileNotFoundError) as missing:
        asyncio.run(Job._call(["no-such-sbatch-here"]))
    assert "sbatch is not on the PATH" in sbatch_message(missing.value)


def test_a_job_describes_its_state_reason_and_log():
    job = WorkerJob("SLURMCluster-0", "12", frozenset({"SLURMCluster-0"}), "/logs/dask-worker-12.err", state="PENDING", reason="PartitionConfig")
    assert job.describe() == "job 12 PENDING (PartitionConfig: the job asks for more than the partition allows (cores, memory, walltime or nodes))"
    job.state, job.reason, job.ended = "FAILED", "NonZeroExitCode", True
    assert job.describe() == "job 12 FAILED (NonZeroExitCode); log /logs/dask-worker-12.err"
    refused = WorkerJob("SLURMCluster-1", None, frozenset(), "", error="Invalid partition name specified")
    assert refused.describe() == "worker SLURMCluster-1: not submitted (Invalid partition name specified)"


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_bad_number_of_jobs_is_refused_before_anything_is_built(jobs):
    with pytest.raises(ParameterError, match=r"The 'workers' parameter \(SLURM jobs\) must be an int >= 1"):
        with slurm_client({"no_such_option": 1}, jobs=jobs):  # the config would fail too, later
            pass
