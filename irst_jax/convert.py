"""PyTorch state_dict (name -> array, NCHW/OIHW) -> Flax variables (NHWC/HWIO).

A conversion is a list of `Rule`s, each mapping one PyTorch module prefix to one Flax module
path and saying what kind of layer it is. Models provide their rules (`acm_unet_rules`, ...);
`convert_state_dict` applies them, checks every tensor's presence and shape, and names the
first missing, unused or mis-shaped tensor in its error.

Layouts (PyTorch's `nn.Conv2d` / `nn.ConvTranspose2d` / `nn.BatchNorm2d` state_dict):
Conv2d weight (out, in, kh, kw) -> kernel (kh, kw, in, out);
ConvTranspose2d weight (in, out, kh, kw) -> kernel (kh, kw, in, out), see
`layers.ConvTranspose4x4`; BatchNorm weight/bias/running_mean/
running_var -> params scale/bias, batch_stats mean/var.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from irst_jax import errors

CONV, CONV_TRANSPOSE, BATCH_NORM, SHUFFLE_ATTENTION = (
    "conv", "conv_transpose", "batch_norm", "shuffle_attention")


class ConversionError(ValueError):
  """A state_dict does not fit the model: names the offending tensor and what was expected."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """`torch_prefix` (e.g. 'layer1.0.conv1') -> Flax module `flax_path` of layer `kind`."""
  torch_prefix: str
  flax_path: tuple[str, ...]
  kind: str


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))


def _conv_transpose(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 0, 1))


# kind -> list of (torch suffix, collection, flax leaf name, transform, required)
_LEAVES = {
    CONV: [("weight", "params", "kernel", _conv, True), ("bias", "params", "bias", None, False)],
    CONV_TRANSPOSE: [("weight", "params", "kernel", _conv_transpose, True),
                     ("bias", "params", "bias", None, False)],
    BATCH_NORM: [("weight", "params", "scale", None, True), ("bias", "params", "bias", None, True),
                 ("running_mean", "batch_stats", "mean", None, True),
                 ("running_var", "batch_stats", "var", None, True)],
    # SA-Net sa_layer: (1, C/2G, 1, 1) gates and the GroupNorm's affine parameters
    SHUFFLE_ATTENTION: [(name, "params", name, np.ravel, True)
                        for name in ("cweight", "cbias", "sweight", "sbias")]
                       + [("gn.weight", "params", "gn_scale", None, True),
                          ("gn.bias", "params", "gn_bias", None, True)],
}


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str] = ("module.",)
                   ) -> dict[str, np.ndarray]:
  """Drops wrapper prefixes such as DataParallel's 'module.' and casts values to numpy."""
  out = {}
  for name, value in state_dict.items():
    for prefix in prefixes:
      if name.startswith(prefix):
        name = name[len(prefix):]
    out[name] = np.asarray(value)
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state_dict (torch name -> numpy array) from a weight file.

  `.pth` / `.pt`: `torch.load` on the CPU with `weights_only=True` (needs torch); a checkpoint
  dict holding the weights under 'state_dict' or 'model' is unwrapped. `.npz`: numpy arrays
  keyed by the torch names.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: another suffix, or a `.pth` that holds no name -> tensor mapping.
    ImportError: a `.pth` / `.pt` file without torch installed.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file {str(path)!r} does not exist")
  if path.suffix == ".npz":
    with np.load(path) as data:
      return {name: data[name] for name in data.files}
  if path.suffix not in (".pth", ".pt"):
    raise ValueError(f"weight file {str(path)!r}: expected a .pth, .pt or .npz file")
  try:
    import torch
  except ImportError:
    raise errors.MissingDependencyError(
        f"reading {str(path)!r} needs PyTorch (pip install 'irst_jax[torch]'), or save the "
        "state_dict as .npz") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model"):
    if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
      state = state[key]
  if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
    raise ValueError(f"weight file {str(path)!r} holds no state_dict (name -> tensor)")
  return {name: value.detach().cpu().numpy() for name, value in state.items()}


def convert_state_dict(state_dict: Mapping[str, Any], rules: Iterable[Rule],
                       reference_variables: Mapping | None = None,
                       ignore: Iterable[str] = ("num_batches_tracked",)) -> dict[str, dict]:
  """Converts a PyTorch state_dict into Flax variables {'params': ..., 'batch_stats': ...}.

  Args:
    state_dict: torch name -> array (torch tensors or numpy arrays), NCHW layouts.
    rules: the model's `Rule`s.
    reference_variables: the model's own initialised variables; when given, every converted
      leaf must exist there with the same shape, and every reference leaf must be covered.
    ignore: torch name suffixes that carry no weights.

  Raises:
    ConversionError: naming the first missing tensor, mis-shaped tensor, unused tensor or
      uncovered Flax leaf.
  """
  state = strip_prefixes(state_dict)
  used = set()
  variables: dict[str, dict] = {}
  for rule in rules:
    for suffix, collection, leaf, transform, required in _LEAVES[rule.kind]:
      name = f"{rule.torch_prefix}.{suffix}" if rule.torch_prefix else suffix
      if name not in state:
        if required:
          raise ConversionError(f"state_dict has no tensor {name!r} (needed for Flax "
                                f"{collection}/{'/'.join(rule.flax_path)}/{leaf})")
        continue
      value = state[name]
      value = transform(value) if transform is not None else value
      path = (collection,) + rule.flax_path + (leaf,)
      if reference_variables is not None:
        expected = _get(reference_variables, path)
        if expected is None:
          raise ConversionError(f"tensor {name!r} maps to {'/'.join(path)}, which the model "
                                "does not have")
        if tuple(expected.shape) != tuple(value.shape):
          raise ConversionError(
              f"tensor {name!r} has shape {tuple(state[name].shape)}, converted "
              f"{tuple(value.shape)}, but the model expects {tuple(expected.shape)} at "
              f"{'/'.join(path)}")
        value = value.astype(expected.dtype)
      _set(variables, path, value)
      used.add(name)
  unused = [n for n in state if n not in used and not any(n.endswith(s) for s in ignore)]
  if unused:
    raise ConversionError(f"state_dict tensor {unused[0]!r} is not used by the model "
                          f"({len(unused)} unused in all)")
  if reference_variables is not None:
    _check_covered(reference_variables, variables)
  return variables


def _check_covered(reference: Mapping, converted: Mapping, prefix: tuple[str, ...] = ()) -> None:
  for key, value in reference.items():
    path = prefix + (key,)
    if isinstance(value, Mapping):
      _check_covered(value, converted, path)
    elif _get(converted, path) is None:
      raise ConversionError(f"no state_dict tensor provides the Flax leaf {'/'.join(path)}")


# transform -> its inverse (Flax layout -> PyTorch layout)
_INVERSES = {_conv: lambda k: np.transpose(k, (3, 2, 0, 1)),
             _conv_transpose: lambda k: np.transpose(k, (2, 3, 0, 1)),
             np.ravel: lambda v: np.reshape(v, (1, -1, 1, 1))}


def to_state_dict(variables: Mapping, rules: Iterable[Rule]) -> dict[str, np.ndarray]:
  """The inverse of `convert_state_dict`: Flax variables -> a PyTorch-layout state_dict.

  Returns torch name -> numpy array (conv weights (out, in, kh, kw), transposed-conv weights
  (in, out, kh, kw), shuffle-attention gates (1, C, 1, 1)); optional leaves the model lacks
  (conv biases) are left out, `num_batches_tracked` is not written. Used to write weight
  files from Flax models (tests of the importer) and to check rules against a model.

  Raises:
    ConversionError: a required leaf is missing from `variables` (named).
  """
  state = {}
  for rule in rules:
    for suffix, collection, leaf, transform, required in _LEAVES[rule.kind]:
      path = (collection,) + rule.flax_path + (leaf,)
      value = _get(variables, path)
      if value is None:
        if required:
          raise ConversionError(f"Flax variables have no leaf {'/'.join(path)} (needed for "
                                f"{rule.torch_prefix}.{suffix})")
        continue
      value = np.asarray(value)
      name = f"{rule.torch_prefix}.{suffix}" if rule.torch_prefix else suffix
      state[name] = _INVERSES[transform](value) if transform is not None else value
  return state


# ----------------------------------------------------------------------------------- ACM

def _residual_stage_rules(torch_prefix: str, flax_path: tuple[str, ...], num_blocks: int,
                          with_shortcut: bool) -> list[Rule]:
  rules = []
  for i in range(num_blocks):
    t, f = f"{torch_prefix}.{i}", flax_path + (f"block{i}",)
    rules += [Rule(f"{t}.conv1", f + ("conv1",), CONV), Rule(f"{t}.bn1", f + ("bn1",), BATCH_NORM),
              Rule(f"{t}.conv2", f + ("conv2",), CONV), Rule(f"{t}.bn2", f + ("bn2",), BATCH_NORM)]
    if i == 0 and with_shortcut:
      rules += [Rule(f"{t}.downsample.0", f + ("shortcut_conv",), CONV),
                Rule(f"{t}.downsample.1", f + ("shortcut_bn",), BATCH_NORM)]
  return rules


def _channel_attention_rules(torch_prefix: str, flax_path: tuple[str, ...], pooled: bool
                             ) -> list[Rule]:
  # torch Sequential indices: [GAP,] conv, BN, ReLU, conv, BN, Sigmoid
  o = 1 if pooled else 0
  return [Rule(f"{torch_prefix}.{o}", flax_path + ("conv1",), CONV),
          Rule(f"{torch_prefix}.{o + 1}", flax_path + ("bn1",), BATCH_NORM),
          Rule(f"{torch_prefix}.{o + 3}", flax_path + ("conv2",), CONV),
          Rule(f"{torch_prefix}.{o + 4}", flax_path + ("bn2",), BATCH_NORM)]


def asym_bi_cha_fuse_rules(torch_prefix: str = "", flax_path: tuple[str, ...] = ()
                           ) -> list[Rule]:
  """Rules for one AsymBiChaFuse (torch names topdown.*, bottomup.*, post.*)."""
  p = f"{torch_prefix}." if torch_prefix else ""
  return (_channel_attention_rules(f"{p}topdown", flax_path + ("topdown",), pooled=True)
          + _channel_attention_rules(f"{p}bottomup", flax_path + ("bottomup",), pooled=False)
          + [Rule(f"{p}post.0", flax_path + ("post_conv",), CONV),
             Rule(f"{p}post.1", flax_path + ("post_bn",), BATCH_NORM)])


def acm_unet_rules(num_blocks: int = 3, tiny: bool = False) -> list[Rule]:
  """Rules for the PyTorch ACM-U-Net (BasicIRSTD `ASKCResUNet`, AsymBiChaFuse) -> `ACMUNet`."""
  stem = ("backbone", "stem")
  if tiny:
    rules = [Rule("stem.0", stem + ("input_bn",), BATCH_NORM), Rule("stem.1", stem + ("conv1",), CONV),
             Rule("stem.2", stem + ("bn1",), BATCH_NORM)]
  else:
    rules = [Rule("stem.0", stem + ("input_bn",), BATCH_NORM)]
    for i, torch_index in enumerate((1, 4, 7), start=1):
      rules += [Rule(f"stem.{torch_index}", stem + (f"conv{i}",), CONV),
                Rule(f"stem.{torch_index + 1}", stem + (f"bn{i}",), BATCH_NORM)]
  for stage in (1, 2, 3):
    rules += _residual_stage_rules(f"layer{stage}", ("backbone", f"layer{stage}"), num_blocks,
                                   with_shortcut=stage > 1)
  for level in (2, 1):
    rules += [Rule(f"deconv{level}", (f"deconv{level}",), CONV_TRANSPOSE)]
    rules += asym_bi_cha_fuse_rules(f"fuse{level}", (f"fuse{level}",))
    rules += _residual_stage_rules(f"uplayer{level}", (f"uplayer{level}",), num_blocks, False)
  rules += [Rule("head.block.0", ("head", "conv1"), CONV),
            Rule("head.block.1", ("head", "bn1"), BATCH_NORM),
            Rule("head.block.4", ("head", "conv2"), CONV)]
  return rules


# ------------------------------------------------------------------------------- DNA-Net

def res_cbam_block_rules(torch_prefix: str, flax_path: tuple[str, ...], with_shortcut: bool
                         ) -> list[Rule]:
  """Rules for one DNA-Net `Res_CBAM_block` (torch conv1, bn1, conv2, bn2, [shortcut.0,
  shortcut.1], ca.fc1, ca.fc2, sa.conv1) -> `dnanet.ResCBAMBlock`."""
  t, f = torch_prefix, flax_path
  rules = [Rule(f"{t}.conv1", f + ("conv1",), CONV), Rule(f"{t}.bn1", f + ("bn1",), BATCH_NORM),
           Rule(f"{t}.conv2", f + ("conv2",), CONV), Rule(f"{t}.bn2", f + ("bn2",), BATCH_NORM)]
  if with_shortcut:
    rules += [Rule(f"{t}.shortcut.0", f + ("shortcut_conv",), CONV),
              Rule(f"{t}.shortcut.1", f + ("shortcut_bn",), BATCH_NORM)]
  return rules + [Rule(f"{t}.ca.fc1", f + ("ca", "fc1"), CONV),
                  Rule(f"{t}.ca.fc2", f + ("ca", "fc2"), CONV),
                  Rule(f"{t}.sa.conv1", f + ("sa", "conv1"), CONV)]


def dnanet_rules(num_blocks=(2, 2, 2, 2), deep_supervision: bool = True,
                 residual: bool = True, in_channels: int = 3,
                 nb_filter=(16, 32, 64, 128, 256)) -> list[Rule]:
  """Rules for the official PyTorch DNA-Net (`DNANet` with `Res_CBAM_block`) -> `dnanet.DNANet`.

  torch `conv{i}_{j}.{k}` (block k of node X^{i,j}) -> Flax `conv{i}_{j}/block{k}` (also
  `conv0_4_final`); ca.fc1 / ca.fc2 / sa.conv1 -> ca/fc1, ca/fc2, sa/conv1; shortcut.0 /
  shortcut.1 -> shortcut_conv / shortcut_bn, present in a node's first block when its input
  width differs from nb_filter[i] (always for the concatenating nodes; for conv0_0 when
  `in_channels` != nb_filter[0]; for conv{i}_0 when nb_filter[i - 1] != nb_filter[i]).
  `conv0_{i}_1x1` and the heads `final1`..`final4` (or `final`) keep their names.
  `residual=False` (the vgg10 backbone) has no shortcuts.
  """
  blocks = lambda i: 1 if i == 0 else num_blocks[i - 1]

  def changes_width(i: int, j: int) -> bool:
    if j > 0:
      return True
    return (in_channels if i == 0 else nb_filter[i - 1]) != nb_filter[i]

  nodes = [(f"conv{i}_{j}", i, changes_width(i, j)) for i in range(5) for j in range(5 - i)]
  rules = []
  for name, i, changes in nodes + [("conv0_4_final", 0, True)]:
    for k in range(blocks(i)):
      rules += res_cbam_block_rules(f"{name}.{k}", (name, f"block{k}"),
                                    with_shortcut=residual and k == 0 and changes)
  rules += [Rule(f"conv0_{i}_1x1", (f"conv0_{i}_1x1",), CONV) for i in (4, 3, 2, 1)]
  heads = [f"final{k}" for k in (1, 2, 3, 4)] if deep_supervision else ["final"]
  return rules + [Rule(h, (h,), CONV) for h in heads]


# ------------------------------------------------------------------------------ Res2Net

def res2net_v1b_rules(num_blocks=(3, 4, 6, 3), scale: int = 4,
                      flax_prefix: tuple[str, ...] = ("backbone",)) -> list[Rule]:
  """Rules for the widely used PyTorch `Res2Net_v1b` (res2net50_v1b_26w_4s, ...) without its
  classifier `fc` -> `res2net.Res2NetV1b` at `flax_prefix`.

  torch `conv1.{0,3,6}` / `conv1.{1,4}` (deep stem) -> stem_conv{1,2,3} / stem_bn{1,2};
  `bn1` -> bn1; `layer{l}.{b}.conv1|bn1|conv3|bn3` -> layer{l}_{b}/same; `.convs.{i}` /
  `.bns.{i}` (i < scale - 1) -> convs_{i} / bns_{i}; the first block's `downsample.1` (conv;
  downsample.0 is the weightless AvgPool) / `downsample.2` -> downsample_conv / downsample_bn.
  """
  p = tuple(flax_prefix)
  rules = [Rule(f"conv1.{t}", p + (f"stem_{kind}{i}",), CONV if kind == "conv" else BATCH_NORM)
           for t, kind, i in ((0, "conv", 1), (1, "bn", 1), (3, "conv", 2), (4, "bn", 2),
                              (6, "conv", 3))]
  rules.append(Rule("bn1", p + ("bn1",), BATCH_NORM))
  for stage, blocks in enumerate(num_blocks, start=1):
    for b in range(blocks):
      t, f = f"layer{stage}.{b}", p + (f"layer{stage}_{b}",)
      names = [("conv1", "conv1", CONV), ("bn1", "bn1", BATCH_NORM)]
      names += [(f"{m}.{i}", f"{m}_{i}", kind) for i in range(scale - 1)
                for m, kind in (("convs", CONV), ("bns", BATCH_NORM))]
      names += [("conv3", "conv3", CONV), ("bn3", "bn3", BATCH_NORM)]
      if b == 0:
        names += [("downsample.1", "downsample_conv", CONV),
                  ("downsample.2", "downsample_bn", BATCH_NORM)]
      rules += [Rule(f"{t}.{torch_name}", f + (flax_name,), kind)
                for torch_name, flax_name, kind in names]
  return rules


def load_res2net_v1b_weights(variables: Mapping[str, Any], path: str | os.PathLike,
                             prefix: tuple[str, ...], num_blocks: Iterable[int], scale: int
                             ) -> dict[str, Any]:
  """`variables` with the `res2net.Res2NetV1b` backbone at `prefix` replaced by the state_dict
  at `path` (other variables kept as they are; `variables` may be `jax.eval_shape` shapes).

  `path`: a `.pth` / `.pt` / `.npz` file of the widely used PyTorch `Res2Net_v1b` (torch key
  names, `load_state_dict`); its ImageNet classifier `fc.*` is dropped. When the model takes
  one input channel and the stem's first kernel has three, that kernel is summed over its
  input channels (the network then sees the grey image as three equal RGB channels). Every
  other tensor must match the backbone exactly (`res2net_v1b_rules`).

  Raises FileNotFoundError / ValueError / errors.MissingDependencyError (`load_state_dict`)
  and ConversionError naming a missing, unused or mis-shaped tensor.
  """
  state = {k: v for k, v in strip_prefixes(load_state_dict(path)).items()
           if not k.startswith("fc.")}
  reference = {col: _replaced({}, prefix, _subtree(tree, prefix))
               for col, tree in variables.items()}
  stem = _subtree(variables["params"], prefix)["stem_conv1"]["kernel"]
  first = state.get("conv1.0.weight")
  if first is not None and first.ndim == 4 and first.shape[1] == 3 and stem.shape[2] == 1:
    state["conv1.0.weight"] = first.sum(axis=1, keepdims=True)
  rules = res2net_v1b_rules(tuple(num_blocks), scale, prefix)
  converted = convert_state_dict(state, rules, reference)
  return {col: _replaced(tree, prefix, _subtree(converted[col], prefix))
          for col, tree in variables.items()}


def _subtree(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _replaced(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
  if not path:
    return value
  return {**tree, path[0]: _replaced(tree.get(path[0], {}), path[1:], value)}


# ------------------------------------------------------------------------------ Pretrained backbones

#: `models.PretrainedBackbone.converter` -> loader(variables, path, prefix, model config section)
#: returning the variables with the backbone at `prefix` replaced by the file's weights.
BACKBONE_LOADERS: dict[str, Callable[..., dict[str, Any]]] = {
    "res2net_v1b": lambda variables, path, prefix, model: load_res2net_v1b_weights(
        variables, path, prefix, model.num_blocks, model.scale),
}


def load_pretrained(variables: Mapping[str, Any], model_config) -> Mapping[str, Any]:
  """The hook of `train.create_train_state`, run after `model.init` outside the compiled
  function: `variables` with the model's pretrained backbone loaded when the `model` config
  section names a weight file for it (`models.pretrained_backbone`), else `variables`.

  Raises what the backbone's loader raises (`load_res2net_v1b_weights`): FileNotFoundError
  naming the file, errors.MissingDependencyError (a .pth without torch), ConversionError
  naming a missing, unused or mis-shaped tensor.
  """
  from irst_jax import models  # pylint: disable=import-outside-toplevel

  found = models.pretrained_backbone(model_config)
  if found is None:
    return variables
  backbone, path = found
  return BACKBONE_LOADERS[backbone.converter](variables, path, backbone.prefix, model_config)
