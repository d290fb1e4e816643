"""experiments/colab_quickstart.ipynb runs end to end (smoke settings, CPU, fake NUAA-SIRST)."""
import json
import os
import pathlib
import subprocess
import sys

from tests.conftest import write_fake_nuaa_sirst

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "colab_quickstart.ipynb"


def notebook_code(path: pathlib.Path) -> str:
  """The code cells as one script: without the cell tagged 'install' and without shell
  ('!') and magic ('%') lines."""
  cells = json.loads(path.read_text())["cells"]
  lines = []
  for cell in cells:
    if cell["cell_type"] != "code" or "install" in cell["metadata"].get("tags", []):
      continue
    lines += [line.rstrip("\n") for line in cell["source"] if not line.lstrip().startswith(("!", "%"))]
  return "\n".join(lines) + "\n"


def test_install_cell_installs_the_cuda12_extra():
  cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
  install = "".join(cells[0]["source"])
  assert cells[0]["metadata"]["tags"] == ["install"] and '.[cuda12]"' in install
  assert all("install" not in c["metadata"].get("tags", []) for c in cells[1:])


def test_notebook_runs_with_smoke_settings(tmp_path):
  write_fake_nuaa_sirst(tmp_path / "raw")
  workdir = tmp_path / "run"
  env = dict(os.environ, IRST_SMOKE="1", IRST_DATA_DIR=str(tmp_path / "raw"),
             IRST_WORKDIR=str(workdir), TFDS_DATA_DIR=str(tmp_path / "tfds"),
             JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
  out = subprocess.run([sys.executable, "-c", notebook_code(NOTEBOOK)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "final: IoU" in out.stdout and "best (step 1): IoU" in out.stdout
  manifest = json.loads((workdir / "export" / "manifest.json").read_text())
  assert manifest["checkpoint"]["step"] == 1 and manifest["model"]["channels"] == [4, 8, 8, 16]
  assert "2 images," in out.stdout
  assert (workdir / "predictions" / "detections.csv").read_text().startswith("image,target_id,x,y")
