"""Several JAX processes on one machine: 2 processes x 2 simulated CPU devices, CPU collectives
(Gloo) over loopback, launched as users launch hosts (`python -m irst_jax.main
--coordinator_address=... --num_processes=2 --process_id=I`).

Each subprocess has a timeout; the ports are free ones (bound to port 0, then released)."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from irst_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 240   # a whole launch (all its processes)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _environment(devices: int) -> dict[str, str]:
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())


def _launch(command: list[str], num_processes: int, devices: int,
            per_process: tuple[list[str], ...] = ()) -> list[subprocess.CompletedProcess]:
  """Runs `command` as `num_processes` processes of `devices` CPU devices each (with the
  distributed flags when more than one; `per_process[i]`: extra arguments of process i);
  returns them in process order. Kills them all past TIMEOUT_S."""
  port = _free_port()
  processes = []
  for i in range(num_processes):
    args = list(command) + (list(per_process[i]) if per_process else [])
    if num_processes > 1:
      args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
               f"--process_id={i}"]
    processes.append(subprocess.Popen(args, cwd=ROOT, env=_environment(devices), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  results = []
  try:
    for p in processes:
      out, err = p.communicate(timeout=TIMEOUT_S)
      results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return results


def _train_command(prepared, workdir, *overrides: str) -> list[str]:
  """tests/test_main.py's tiny network and data; 6 training images, a global batch of 4: one
  step an epoch, 3 epochs; SGD (Adagrad's first steps are ~lr * sign(gradient), which turns
  float rounding of near-zero gradients into differences of lr)."""
  raw, data_dir = prepared
  return [sys.executable, "-m", "irst_jax.main",
          "--config=configs/acm_unet.py:nuaa_sirst,smoke", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}", f"--config.dataset.manual_dir={raw}",
          "--config.model.channels=(4, 8, 8, 16)", "--config.model.num_blocks=1",
          "--config.dataset.crop_size=32", "--config.dataset.pad_multiple=96",
          "--config.train.batch_size=4", "--config.train.num_epochs=3",
          "--config.train.eval_every_epochs=3", "--config.optim.optimizer=sgd",
          "--config.optim.learning_rate=0.5", *overrides]


def _ok(results):
  for i, r in enumerate(results):
    assert r.returncode == 0, f"process {i}: {r.stderr[-3000:]}"


def _checkpoint(workdir, step=None) -> dict:
  store = checkpoints.CheckpointStore(workdir)
  try:
    return store.latest.restore(step if step is not None else store.latest_step())
  finally:
    store.close()


def _rows(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def _max_difference(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
             if np.size(x))


def test_two_processes_train_as_one_process_and_resume(prepared_fake_nuaa, tmp_path):
  """1 process x 4 devices, 3 steps, against 2 processes x 2 devices stopped by the time limit
  after step 1 (agreed by both) and rerun: the rerun resumes at step 1 and ends with the same
  parameters, batch statistics and test metrics; process 0 alone wrote the logs."""
  one, two = tmp_path / "one", tmp_path / "two"
  _ok(_launch(_train_command(prepared_fake_nuaa, one), 1, 4))
  first = _launch(_train_command(prepared_fake_nuaa, two, "--config.train.time_limit_minutes=1e-9"),
                  2, 2)
  _ok(first)
  log = (two / "train.log").read_text()
  assert log.count("time_limit_minutes=1e-09 reached at step 1 (epoch 1, step 1 of 1)") == 1
  step1 = _checkpoint(two)
  assert int(step1["step"]) == 1
  second = _launch(_train_command(prepared_fake_nuaa, two), 2, 2)
  _ok(second)
  log = (two / "train.log").read_text()
  assert log.count("resumed from") == 1 and f"resumed from {two}/checkpoints at step 1" in log
  assert [(r["split"], r["step"]) for r in _rows(two)] == [
      ("train", 1), ("test", 1), ("train", 2), ("train", 3), ("test", 3)]   # written once
  a, b = _checkpoint(one), _checkpoint(two)
  assert int(a["step"]) == int(b["step"]) == 3
  for key in ("params", "batch_stats"):
    for x, y in zip(jax.tree_util.tree_leaves(a[key]), jax.tree_util.tree_leaves(b[key])):
      np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
  assert _max_difference(step1["params"], b["params"]) > 1e-4   # steps 2 and 3 moved them
  test_one, test_two = _rows(one)[-1], _rows(two)[-1]
  assert test_one["split"] == "test" and test_one["images"] == test_two["images"] == 6
  for name in ("IoU", "nIoU", "Pd", "Fa"):
    assert abs(test_one[name] - test_two[name]) <= 1e-6 * max(1.0, abs(test_one[name])), name
  for r in second:
    assert f"final: IoU {test_one['IoU']:.4f}" in r.stdout   # every process has the metrics


def test_workdir_not_shared_is_refused(prepared_fake_nuaa, tmp_path):
  """Processes that see different workdirs (a workdir not on a shared file system) stop at
  start with one error line on each, exit status 2."""
  command = [c for c in _train_command(prepared_fake_nuaa, tmp_path / "unused")
             if not c.startswith("--workdir=")]
  results = _launch(command, 2, 2, per_process=([f"--workdir={tmp_path / 'host0'}"],
                                                [f"--workdir={tmp_path / 'host1'}"]))
  for r in results:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error: the processes see different lock records" in r.stderr
    assert "is the workdir on a file system shared by every host?" in r.stderr
  assert not (tmp_path / "host0" / checkpoints.CONFIG_FILE).exists()


_AGREEMENT = textwrap.dedent("""
    import sys
    from irst_jax import distributed, errors
    pid = int(sys.argv[2])
    assert distributed.initialize(sys.argv[1], 2, pid) == 2
    print("any", distributed.any_process(pid == 1), distributed.any_process(False))
    print("each", distributed.any_process_each([pid == 0, False, True]))
    print("same", distributed.same_on_all_processes(7, "sevens"))
    distributed.barrier("test")
    try:
      distributed.same_on_all_processes(10 + pid, "latest checkpoint steps")
    except errors.UserError as e:
      print("error", e)
""")


def test_agreement_helpers_across_two_processes():
  """any_process / any_process_each / same_on_all_processes / barrier between 2 processes."""
  port = _free_port()
  processes = [subprocess.Popen([sys.executable, "-c", _AGREEMENT, f"127.0.0.1:{port}", str(i)],
                                cwd=ROOT, env=_environment(1), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=120) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if not line.startswith("[Gloo]")]
    assert lines[:3] == ["any True False", "each [True, False, True]", "same 7"], out
    assert lines[3].startswith("error the processes see different latest checkpoint steps: "
                               "[10, 11] (process 0, 1, ...)"), out
