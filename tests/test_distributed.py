"""irst_jax.distributed: launch detection and flag validation (the multi-process runs are in
tests/test_multiprocess.py)."""
from __future__ import annotations

import pytest

from irst_jax import distributed, errors


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),          # one task: one process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "slurm"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "open-mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "cloud-tpu"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
])
def test_cluster_detected(environ, expected):
  assert distributed.cluster_detected(environ) == expected


def test_single_process_without_flags_or_cluster():
  assert distributed.initialize(environ={}) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="h:1", num_processes=2), "--process_id is missing"),
    (dict(coordinator_address="h:1", process_id=0), "--num_processes is missing"),
    (dict(coordinator_address="host", num_processes=2, process_id=0), "expected HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "0 <= process_id < "),
])
def test_bad_flags_are_user_errors(kwargs, message):
  with pytest.raises(errors.UserError, match=message):
    distributed.initialize(environ={}, **kwargs)


def test_single_process_agreement_is_local():
  """With one process nothing is exchanged: the local decisions and values come back."""
  assert distributed.any_process_each([True, False, True]) == [True, False, True]
  assert distributed.any_process(False) is False and distributed.any_process(1) is True
  assert distributed.same_on_all_processes(5, "steps") == 5
  distributed.barrier("nothing to wait for")
