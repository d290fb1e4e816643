"""The PyTorch benchmark baselines (experiments/torch_reference/) against the golden vectors
of the reference implementations and the reference parameter counts, so that the speed
ratios of experiments/benchmark_torch.py compare the same networks."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

_REPO = Path(__file__).resolve().parents[1]
_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"

sys.path.insert(0, str(_REPO / "experiments"))
from torch_reference import acm_unet, dnanet  # noqa: E402


def _params(model) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _load_golden(model, name: str):
  path = _GOLDEN / name
  if not path.exists():
    pytest.skip(f"{path} not found")
  golden = np.load(path)
  state = {k[len("state_dict/"):]: torch.from_numpy(golden[k])
           for k in golden.files if k.startswith("state_dict/")}
  ours = {k: tuple(v.shape) for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}   # a counter the golden files do not keep
  assert ours == {k: tuple(v.shape) for k, v in state.items()}
  model.load_state_dict(state, strict=False)
  with torch.no_grad():
    outputs = model.eval()(torch.from_numpy(golden["input/0"]))
  return golden, outputs


def test_acm_unet_golden_outputs_and_parameters():
  model = acm_unet.ACMUNet(in_channels=1)
  assert _params(model) == 397_823
  golden, logits = _load_golden(model, "acm_unet.npz")
  np.testing.assert_allclose(torch.sigmoid(logits).numpy(), golden["output/0"], atol=1e-4,
                             rtol=0)


def test_dnanet_golden_outputs():
  golden, outputs = _load_golden(dnanet.DNANet(input_channels=3), "dnanet.npz")
  assert len(outputs) == 4
  for i, out in enumerate(outputs):
    np.testing.assert_allclose(out.numpy(), golden[f"output/{i}"], atol=1e-4, rtol=0)


def test_dnanet_parameter_counts_and_training_outputs():
  assert _params(dnanet.DNANet(input_channels=1)) == 4_696_568
  model = dnanet.DNANet(input_channels=3)
  assert _params(model) == 4_696_888
  outputs = model.train()(torch.zeros(1, 3, 32, 32))
  assert [tuple(o.shape) for o in outputs] == [(1, 1, 32, 32)] * 4
