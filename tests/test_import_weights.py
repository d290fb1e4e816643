"""Import of PyTorch DNA-Net weight files (irst_jax/import_weights.py), with files written here.

The .pth.tar files are written with torch from a state_dict made by inverting the conversion
rules on random Flax variables of a small DNA-Net (`convert.to_state_dict`), in the forms the
official code and DataParallel produce.
"""
from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import jax_utils

from configs import dnanet as dnanet_config
from irst_jax import checkpoints, convert, import_weights, models, train
from irst_jax.data.builders import nudt_sirst
from tests.conftest import prepare_builder, write_fake_nudt_sirst
from tests.test_dnanet import _random_variables

torch = pytest.importorskip("torch")

# widths >= 16: CBAM hidden width C // 16 > 0 (Orbax cannot save zero-size arrays)
SMALL = dict(nb_filter=(16, 16, 16, 16, 16), num_blocks=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def fake_nudt(tmp_path_factory):
  base = tmp_path_factory.mktemp("fake_nudt_import")
  raw = write_fake_nudt_sirst(base / "raw")
  prepare_builder(nudt_sirst.NudtSirst, raw, base / "tfds", "50_50")
  return raw, base / "tfds"


def _config(fake_nudt, arg="nudt_sirst,smoke,pretrained_rgb"):
  raw, data_dir = fake_nudt
  config = dnanet_config.get_config(arg)
  config.model.nb_filter, config.model.num_blocks = SMALL["nb_filter"], SMALL["num_blocks"]
  config.dataset.data_dir, config.dataset.manual_dir = str(data_dir), str(raw)
  config.dataset.crop_size = 32
  return config


@pytest.fixture(scope="module")
def small(fake_nudt):
  """(config, model, random Flax variables, their torch state_dict as numpy)."""
  config = _config(fake_nudt)
  model = models.create_model(config.model)
  variables = _random_variables(model, np.zeros((1, 32, 32, 3), np.float32), seed=3)
  rules = import_weights.dnanet_rules_for(model, 3)
  return config, model, variables, convert.to_state_dict(variables, rules)


def _save(path: pathlib.Path, obj) -> pathlib.Path:
  torch.save(obj, str(path))
  return path


def _tensors(state, prefix=""):
  return {prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def test_config_argument_pretrained_rgb():
  config = dnanet_config.get_config("nudt_sirst,pretrained_rgb")
  assert (config.model.in_channels, config.dataset.normalization) == (3, "imagenet_rgb")
  assert config.dataset.name == "nudt_sirst"
  default = dnanet_config.get_config("nudt_sirst")
  assert (default.model.in_channels, default.dataset.normalization) == (1, "dataset")


def test_official_nested_file_round_trip_and_eval(small, tmp_path):
  config, model, variables, state = small
  # What the official train.py saves: metadata beside the state_dict, mean_IOU a numpy
  # float (needs the numpy allowlist under weights_only=True); here also 'module.' names.
  num_batches = {k.replace("running_mean", "num_batches_tracked"): torch.tensor(7)
                 for k in state if k.endswith("running_mean")}
  path = _save(tmp_path / "official.pth.tar", {
      "epoch": 12, "state_dict": dict(_tensors(state, "module."), **num_batches),
      "loss": 0.25, "mean_IOU": np.float64(0.875)})
  workdir = tmp_path / "run"
  record = import_weights.import_weights(config, path, workdir)
  assert record["file_metadata"] == {"epoch": 12, "loss": 0.25, "mean_IOU": 0.875}
  assert record["tensors"] == len(state) + len(num_batches)
  assert record["parameters"] == sum(np.size(v) for v in jax.tree.leaves(variables["params"]))

  # The workdir holds the tree evaluate_workdir restores (its template, from
  # create_train_state, traced without compiling the large init) ...
  imported = import_weights.imported_state(config, state)
  template = train._checkpoint_state(imported, 0)
  expected = jax.eval_shape(lambda: train._checkpoint_state(
      train.create_train_state(model, config, imported.tx, (1, 32, 32, 3)), 0))
  assert jax.tree.structure(expected) == jax.tree.structure(template)
  for which in ("latest", "best"):
    store = checkpoints.CheckpointStore(workdir)
    restored = store.restore(template, which=which)
    store.close()
    # ... holding the file's exact weights,
    jax.tree.map(lambda e, r: np.testing.assert_equal(np.shape(r), e.shape), expected, restored)
    jax.tree.map(np.testing.assert_array_equal, restored["params"], variables["params"])
    jax.tree.map(np.testing.assert_array_equal, restored["batch_stats"],
                 variables["batch_stats"])
    assert int(restored["step"]) == 0 and int(restored["epoch"]) == 0
  # so the outputs are the converted model's,
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(model.apply)
  converted = convert.convert_state_dict(state, import_weights.dnanet_rules_for(model, 3))
  got = apply({"params": restored["params"], "batch_stats": restored["batch_stats"]}, x)
  want = apply(converted, x)
  assert len(got) == 4
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  # and the evaluation of --mode=eval runs on it with 3-channel imagenet_rgb batches.
  saved = checkpoints.load_config(workdir)
  assert (saved.dataset.normalization, saved.model.in_channels) == ("imagenet_rgb", 3)
  restored_state, _ = train._restore_into(imported, restored)
  values = train.evaluate(train.make_eval_step(model, saved.eval),
                          jax_utils.replicate(restored_state), saved, "test")
  assert values["images"] == 6
  assert all(np.isfinite(v) for v in values.values())
  with pytest.raises(ValueError, match="already holds checkpoints"):
    import_weights.import_weights(config, path, workdir)


@pytest.mark.parametrize("form", ["bare", "bare_module", "net"])
def test_other_file_forms_give_the_same_state_dict(small, tmp_path, form):
  _, _, _, state = small
  obj = {"bare": _tensors(state), "bare_module": _tensors(state, "module."),
         "net": {"net": _tensors(state), "epoch": 3}}[form]
  loaded, metadata = import_weights.load_torch_file(_save(tmp_path / "w.pth.tar", obj))
  assert metadata == ({"epoch": 3} if form == "net" else {})
  loaded = convert.strip_prefixes(loaded)
  assert set(loaded) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(loaded[k], v)


def test_mismatched_files_name_the_tensor(small, tmp_path, fake_nudt):
  config, _, _, state = small
  truncated = {k: v for k, v in state.items() if k != "conv1_1.0.sa.conv1.weight"}
  path = _save(tmp_path / "truncated.pth.tar", {"state_dict": _tensors(truncated, "module.")})
  with pytest.raises(convert.ConversionError, match=r"'conv1_1\.0\.sa\.conv1\.weight'"):
    import_weights.import_weights(config, path, tmp_path / "a")
  assert not (tmp_path / "a").exists()
  misshaped = dict(state, **{"conv0_2_1x1.weight": np.zeros((16, 9, 1, 1), np.float32)})
  path = _save(tmp_path / "misshaped.pth.tar", {"state_dict": _tensors(misshaped)})
  with pytest.raises(convert.ConversionError,
                     match=r"'conv0_2_1x1\.weight' has shape \(16, 9, 1, 1\).*\(1, 1, 16, 16\)"):
    import_weights.import_weights(config, path, tmp_path / "b")
  # 3-channel weights into a grey config: the first conv is named with the fix.
  grey = _config(fake_nudt, "nudt_sirst,smoke")
  with pytest.raises(convert.ConversionError,
                     match=r"conv0_0\.0\.conv1\.weight.*\(16, 3, 3, 3\).*pretrained_rgb"):
    import_weights.imported_state(grey, state)
  grey.model.in_channels = 3   # 3 channels with a grey pipeline
  with pytest.raises(ValueError, match=r"in_channels=3.*'dataset' yields 1-channel"):
    import_weights.imported_state(grey, state)


def test_bad_files(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nothere.pth"):
    import_weights.load_torch_file(tmp_path / "nothere.pth")
  path = _save(tmp_path / "meta.pth", {"epoch": 1, "optimizer": {"lr": 0.1}})
  with pytest.raises(ValueError, match=r"no state_dict.*\['epoch', 'optimizer'\]"):
    import_weights.load_torch_file(path)
  # weights_only=True: a file needing any other class is refused, not executed
  path = _save(tmp_path / "object.pth", {"state_dict": {"w": torch.zeros(1)},
                                         "where": pathlib.PurePosixPath("/x")})
  with pytest.raises(ValueError, match="weights_only=True.*PurePosixPath"):
    import_weights.load_torch_file(path)
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install 'irst_jax\[torch\]'"):
    import_weights.load_torch_file(path)
