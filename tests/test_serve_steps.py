"""experiments/serve_steps.py: the request protocol benchmark_vs_torch.py --interleave drives."""
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import serve_steps  # noqa: E402


class _Result:
  def __init__(self):
    self.blocked = 0

  def block_until_ready(self):
    self.blocked += 1


def test_serve_runs_the_requested_steps_and_reports_them():
  calls = {"train": 0, "infer": 0}
  result = _Result()

  def run(mode):
    def once():
      calls[mode] += 1
      return result
    return once
  stdout = io.StringIO()
  serve_steps.serve({"train": run("train"), "infer": run("infer")},
                    stdin=io.StringIO("train 3\ninfer 2\nquit\ntrain 5\n"), stdout=stdout)
  lines = stdout.getvalue().splitlines()
  assert lines[0] == "ready"
  replies = [json.loads(line) for line in lines[1:]]
  assert [(r["mode"], r["steps"]) for r in replies] == [("train", 3), ("infer", 2)]
  assert all(r["seconds"] >= 0 for r in replies)
  assert calls == {"train": 3, "infer": 2}     # nothing after "quit"
  assert result.blocked == 2                   # once a request, after its last step
