"""Several processes (hosts) with JAX's multi-controller runtime, `jax.distributed`.

Every process runs the same program; the train step is one `jax.pmap` over every device of
every process (`jax.devices()`), each process feeding its own (`jax.local_devices()`).
`initialize` starts the runtime from the flags named as `jax.distributed.initialize`'s
arguments, or from a cluster JAX detects itself (Slurm `srun`, Open MPI `mpirun`, Cloud TPU
pods, `JAX_COORDINATOR_ADDRESS`), else leaves a single process. The helpers below make the
decisions a single process takes alone the same on every process (`any_process`,
`same_on_all_processes`) and let process 0 alone write what exists once (`is_primary`).
On CPU the collectives between processes go through Gloo over TCP (loopback in the tests).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np

from irst_jax import errors


def cluster_detected(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The kind of multi-process launch the environment shows, or None for a single process.

  Slurm with more than one task, Open MPI with more than one rank, a multi-host Cloud TPU
  slice, or an explicit `JAX_COORDINATOR_ADDRESS`: the launches `jax.distributed.initialize()`
  detects by itself.
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if environ.get("SLURM_JOB_ID") and int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return "slurm"
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "open-mpi"
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "cloud-tpu"
  return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               environ: Mapping[str, str] = os.environ) -> int:
  """Starts `jax.distributed` when asked or detected; returns the number of processes.

  `coordinator_address` ('HOST:PORT' of process 0), `num_processes` and `process_id` are given
  together (all three, or only the address where the cluster supplies the rest), before any
  other JAX call. Raises UserError for an incomplete or inconsistent set.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if all(v is None for v in given.values()) and cluster_detected(environ) is None:
    return 1
  if coordinator_address is not None and (num_processes is None) != (process_id is None):
    missing = [k for k, v in given.items() if v is None]
    raise errors.UserError(f"--{missing[0]} is missing; expected --coordinator_address, "
                           "--num_processes and --process_id together")
  if coordinator_address is not None and ":" not in coordinator_address:
    raise errors.UserError(f"--coordinator_address={coordinator_address!r}; expected HOST:PORT "
                           "of process 0")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise errors.UserError(f"--process_id={process_id}; expected 0 <= process_id < "
                           f"--num_processes={num_processes}")
  # CPU arrays' collectives across processes (GPU and TPU use their own; harmless there).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return jax.process_count()


def is_primary() -> bool:
  """True on the process that writes what exists once (config, logs, reports, best metrics)."""
  return jax.process_index() == 0


def _gathered(value: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(value))


def any_process(flag: bool) -> bool:
  """True when `flag` is true on any process (the time limit, a stop request)."""
  return any_process_each([flag])[0]


def any_process_each(flags: Sequence[bool]) -> list[bool]:
  """For each of `flags` (the same decisions in the same order on every process), whether it
  is true on any process: one exchange for several decisions (e.g. a non-finite loss and the
  time limit, after each training dispatch)."""
  flags = [bool(f) for f in flags]
  if jax.process_count() == 1:
    return flags
  gathered = _gathered(np.asarray(flags, np.int32)).reshape(jax.process_count(), len(flags))
  return [bool(v) for v in gathered.any(axis=0)]


def same_on_all_processes(value: int, what: str) -> int:
  """`value` when every process has the same; raises UserError naming `what` otherwise.

  Used at start for the latest checkpoint step: processes that disagree do not share the
  workdir (each would resume from a different place).
  """
  if jax.process_count() == 1:
    return value
  values = _gathered(np.asarray([value], np.int64)).reshape(-1)
  if (values != values[0]).any():
    raise errors.UserError(f"the processes see different {what}: {values.tolist()} (process 0, "
                           "1, ...); expected one value: is the workdir on a file system "
                           "shared by every host?")
  return value


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)
