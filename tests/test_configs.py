"""Tests of the per-dataset config arguments (configs/default.py apply_arg)."""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import acm_fpn, acm_unet, cgranet, default
from irst_jax import configs, errors
from irst_jax.data import builders

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_datasets_have_builders():
  assert set(default.DATASETS) == set(builders.BUILDERS) == set(default.DATASET_DEFAULTS)


@pytest.mark.parametrize("arg, config, crop, epochs", [
    (None, "50_50", 256, 400),
    ("nuaa_sirst", "50_50", 256, 400),
    ("nudt_sirst", "50_50", 256, 400),
    ("mdvsfa_cgan", "official", 128, 50),
])
def test_dataset_defaults(arg, config, crop, epochs):
  c = acm_unet.get_config(arg)
  assert c.dataset.name == (arg or "nuaa_sirst")
  assert c.dataset.builder_config == config and c.dataset.crop_size == crop
  assert (c.dataset.train_split, c.dataset.eval_split) == ("train", "test")
  assert c.dataset.pad_multiple == 32 and c.train.num_epochs == epochs
  assert c.train.batch_size == 16
  assert config in [bc.name for bc in builders.BUILDERS[c.dataset.name].BUILDER_CONFIGS]


def test_smoke_wins_whatever_the_order():
  for arg in ("mdvsfa_cgan,smoke", "smoke,mdvsfa_cgan"):
    c = acm_fpn.get_config(arg)
    assert c.dataset.name == "mdvsfa_cgan" and c.dataset.crop_size == 64
    assert c.train.num_epochs == 2


@pytest.mark.parametrize("arg", ["nudt", "nuaa_sirst,nudt_sirst"])
def test_bad_arguments(arg):
  with pytest.raises(ValueError):
    acm_unet.get_config(arg)


@pytest.mark.parametrize("arg, dataset, builder_config, epochs", [
    (None, "mdvsfa_cgan", "official", 50),
    ("nudt_sirst", "nudt_sirst", "50_50", 400),
])
def test_cgranet_recipe(arg, dataset, builder_config, epochs):
  c = cgranet.get_config(arg)
  assert (c.dataset.name, c.dataset.builder_config) == (dataset, builder_config)
  assert c.dataset.crop_size == 128 and c.train.batch_size == 12
  assert c.train.num_epochs == epochs and c.train.loss == "unite"
  assert (c.optim.optimizer, c.optim.learning_rate, c.optim.schedule, c.optim.power) == (
      "adam", 1e-4, "poly", 0.9)
  assert cgranet.get_config(f"{dataset},smoke").dataset.crop_size == 64


def test_library_imports_no_repository_module(tmp_path):
  """The package stands alone: importing every command and using the config defaults from an
  unrelated folder loads nothing of the repository-root `configs` package."""
  script = (
      "import sys\n"
      "import irst_jax.main, irst_jax.train, irst_jax.score, irst_jax.predict\n"
      "import irst_jax.evaluation.score, irst_jax.evaluation.baselines\n"
      "import irst_jax.serving.predict, irst_jax.serving.export\n"
      "import irst_jax.data.stats, irst_jax.import_weights\n"
      f"assert irst_jax.__file__.startswith({str(tmp_path / 'package')!r}), irst_jax.__file__\n"
      "from irst_jax.configs import default\n"
      "config = irst_jax.train._with_eval_defaults(default.apply_arg(default.get_base_config(),"
      " 'nudt_sirst,smoke'))\n"
      "assert config.dataset.name == 'nudt_sirst' and config.train.num_epochs == 2\n"
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('acm_unet', {str(ROOT / 'configs' / 'acm_unet.py')!r})\n"
      "model = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(model)\n"
      "assert model.get_config('nuaa_sirst,smoke').model.name == 'acm_unet'\n"
      "loaded = sorted(m for m in sys.modules if m == 'configs' or m.startswith('configs.'))\n"
      "print('REPOSITORY MODULES', loaded)\n")
  # This checkout's package alone on the path (not the repository root, not an installed copy).
  (tmp_path / "package").mkdir()
  (tmp_path / "package" / "irst_jax").symlink_to(ROOT / "irst_jax", target_is_directory=True)
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "package"))
  out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "REPOSITORY MODULES []" in out.stdout


def test_registry_builds_every_model_from_its_config_section():
  """Every config's model section maps field by field onto its module; EAAU-Net has a module
  of its own whose defaults are the paper's (tiny stem, EAA fusion); stray fields are named."""
  from configs import daea, dnanet, eaau_net
  from irst_jax import models
  from irst_jax.models import eaau_net as eaau_net_model

  for config_module in (acm_unet, acm_fpn, eaau_net, dnanet, daea, cgranet):
    config = config_module.get_config(None).model
    module = models.create_model(config, axis_name="batch")
    assert type(module) is models.MODELS[config.name] and module.axis_name == "batch"
    weights = models.PRETRAINED_BACKBONES.get(config.name)
    for key, value in config.items():
      if weights and key == weights.field:   # a config field the module does not have
        assert not hasattr(module, key) and value == ""
      elif key not in ("name", "in_channels"):
        assert getattr(module, key) == (tuple(value) if isinstance(value, list) else value), key
  default_eaau = eaau_net_model.EAAUNet()
  assert (default_eaau.fusion, default_eaau.tiny) == ("eaa", True)
  config = acm_unet.get_config(None).model
  config.fusoin = "asym_bi"
  with pytest.raises(ValueError, match=r"model\.fusoin is not a field of 'acm_unet' \(ACMUNet\)"):
    models.create_model(config)


@pytest.mark.parametrize("name", configs.names())
def test_every_config_parses_its_argument_with_the_shared_grammar(name):
  """Each packaged config's get_config goes through default.apply_arg: the same datasets,
  `smoke`, and the same error naming an unknown part (DNA-Net adds its option)."""
  module = importlib.import_module(f"irst_jax.configs.{name}")
  extra = ", 'pretrained_rgb'" if name == "dnanet" else ""
  expected = (f"unknown config argument 'bogus'; expected a dataset (nuaa_sirst, nudt_sirst, "
              f"mdvsfa_cgan) or {'one of ' if extra else ''}'smoke'{extra}")
  with pytest.raises(ValueError, match=re.escape(expected)):
    module.get_config("nudt_sirst,bogus")
  with pytest.raises(ValueError, match="several datasets"):
    module.get_config("nudt_sirst,nuaa_sirst")
  config = module.get_config("smoke,nudt_sirst")
  assert (config.model.name, config.dataset.name) == (name, "nudt_sirst")
  assert (config.train.num_epochs, config.dataset.crop_size) == (2, 64)
  # the repository's configs/NAME.py is the packaged one
  assert importlib.import_module(f"configs.{name}").get_config is module.get_config


def test_dnanet_pretrained_rgb_option():
  config = importlib.import_module("irst_jax.configs.dnanet").get_config("pretrained_rgb,smoke")
  assert (config.model.in_channels, config.dataset.normalization) == (3, "imagenet_rgb")
  assert config.dataset.name == "nuaa_sirst" and config.train.num_epochs == 2


def test_config_names_resolve_to_packaged_files(tmp_path, monkeypatch):
  assert configs.names() == ["acm_fpn", "acm_unet", "cgranet", "daea", "dnanet", "eaau_net"]
  packaged = ROOT / "irst_jax" / "configs"
  monkeypatch.chdir(tmp_path)
  argv = ["prog", "--config=acm_unet:nuaa_sirst,smoke", "--workdir=w", "--config", "dnanet.py",
          "--config.train.seed=3", "-config=daea"]
  assert configs.resolve_argv(argv) == [
      "prog", f"--config={packaged / 'acm_unet.py'}:nuaa_sirst,smoke", "--workdir=w",
      "--config", str(packaged / "dnanet.py"), "--config.train.seed=3",
      f"-config={packaged / 'daea.py'}"]
  # a file of that name in the working folder wins; a path is kept as it is
  (tmp_path / "acm_unet").write_text("def get_config(arg=None): ...\n")
  assert configs.resolve("acm_unet:smoke") == "acm_unet:smoke"
  repo_file = f"{ROOT / 'configs' / 'acm_fpn.py'}:nudt_sirst"
  assert configs.resolve(repo_file) == repo_file
  # neither a file nor a name: one line naming the packaged configs; a missing path is not
  # looked up by name
  for value, name in (("nope:smoke", "nope"), ("sub/acm_unet.py", "sub/acm_unet")):
    with pytest.raises(errors.UserError) as raised:
      configs.resolve(value)
    assert str(raised.value) == (
        f"--config={value}: cannot load the config file (No such file {value.split(':')[0]!r}) "
        f"and {name!r} is not a packaged config; expected a Python file defining get_config() "
        "or one of acm_fpn, acm_unet, cgranet, daea, dnanet, eaau_net, e.g. "
        "--config=acm_unet[:arg]")
