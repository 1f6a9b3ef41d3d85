"""ResNet-50 in Flax with torchvision's parameter layout, for classifier accuracy of samples.

torchvision's resnet50: conv1 7x7/2 -> bn1 -> ReLU -> maxpool 3x3/2 (pad 1), then layer1..layer4
of 3, 4, 6, 3 Bottleneck blocks (widths 64, 128, 256, 512, expansion 4; the stride of a stage sits
on the block's 3x3 conv, "ResNet v1.5"; a 1x1 conv + BN `downsample` projection where the shape
changes), global average pool, fc to 1000 classes. BatchNorm eps 1e-5, running statistics.

Flax module names mirror the state-dict keys (``layer2.0.downsample.1.running_mean`` ->
``batch_stats/layer2_0/downsample_1/mean``); `load_resnet50(path)` reads a local torchvision-format
``.pth``/``.pt`` (torch) or ``.npz`` file, never downloads.

ImageNet preprocessing (`preprocess_imagenet`): images in [-1, 1] -> [0, 1], shorter side resized
to 256 (bilinear with antialiasing, as torchvision's tensor Resize), center crop 224, per-channel
(x - mean) / std with the ImageNet statistics.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax.eval.weights import read_state_dict, state_dict_to_flax

RESNET50_FILE = "resnet50-0676ba61.pth"
MISSING_HINT = (f"torchvision's ImageNet ResNet-50 weights are usually obtained as "
                f"'{RESNET50_FILE}' (IMAGENET1K_V1; resnet50-11ad3fa6.pth is V2) from "
                "download.pytorch.org/models; download it once, place it locally and name its path "
                "in the config (a .npz with the same state-dict keys works too and needs no torch).")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
_HIGHEST = jax.lax.Precision.HIGHEST


def _conv(features: int, kernel: int, stride: int, name: str, precision: Any) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 use_bias=False, precision=precision, name=name)


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


class Bottleneck(nn.Module):
  """1x1 (width) -> 3x3 (width, stride) -> 1x1 (4 width), each with BN; residual; ReLU."""

  width: int
  stride: int = 1
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    out_ch = 4 * self.width
    y = nn.relu(_bn("bn1")(_conv(self.width, 1, 1, "conv1", p)(x)))
    y = nn.relu(_bn("bn2")(_conv(self.width, 3, self.stride, "conv2", p)(y)))
    y = _bn("bn3")(_conv(out_ch, 1, 1, "conv3", p)(y))
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = _bn("downsample_1")(_conv(out_ch, 1, self.stride, "downsample_0", p)(x))
    return nn.relu(y + x)


class ResNet50(nn.Module):
  """NHWC (ImageNet-normalised) -> [N, num_classes] logits."""

  num_classes: int = 1000
  stages: Sequence[Sequence[int]] = STAGES
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    x = nn.relu(_bn("bn1")(_conv(64, 7, 2, "conv1", p)(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (width, blocks, stride) in enumerate(self.stages):
      for j in range(blocks):
        x = Bottleneck(width, stride if j == 0 else 1, precision=p, name=f"layer{i + 1}_{j}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, precision=p, name="fc")(x)


# ------------------------------------------------------------------------------ preprocessing


def preprocess_imagenet(images, resize: int = 256, crop: int = 224,
                        value_range: Sequence[float] = (-1.0, 1.0)):
  """[N, H, W, 3] in `value_range` -> [N, crop, crop, 3] ImageNet-normalised float32.

  Shorter side to `resize` (longer side int(resize * long / short), as torchvision), bilinear with
  antialiasing when shrinking, then the centre crop (offset round((size - crop) / 2)).
  """
  lo, hi = (float(v) for v in value_range)
  x = (jnp.asarray(images, jnp.float32) - lo) / (hi - lo)
  n, h, w, c = x.shape
  if h <= w:
    nh, nw = resize, int(resize * w / h)
  else:
    nh, nw = int(resize * h / w), resize
  if (nh, nw) != (h, w):
    x = jax.image.resize(x, (n, nh, nw, c), "linear", antialias=True)
  top = int(round((nh - crop) / 2.0))
  left = int(round((nw - crop) / 2.0))
  x = x[:, top:top + crop, left:left + crop]
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


# ------------------------------------------------------------------------------ weights


@functools.lru_cache(maxsize=4)
def abstract_variables(num_classes: int = 1000, input_size: int = 224):
  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  return jax.eval_shape(ResNet50(num_classes).init, jax.random.key(0), x)


def convert_state_dict(state_dict, num_classes: int = 1000) -> dict:
  """A torchvision resnet50 state dict -> Flax variables {'params', 'batch_stats'} (strict)."""
  return state_dict_to_flax(state_dict, abstract_variables(num_classes))


def load_resnet50(path: str, num_classes: int = 1000) -> dict:
  """Flax variables of a torchvision-format ResNet-50 from a local .pth/.pt or .npz file."""
  return convert_state_dict(read_state_dict(path, MISSING_HINT), num_classes)


@functools.partial(jax.jit, static_argnames=("preprocess", "num_classes"))
def _logits(variables, images, preprocess: bool = True, num_classes: int = 1000):
  x = preprocess_imagenet(images) if preprocess else jnp.asarray(images, jnp.float32)
  return ResNet50(num_classes).apply(variables, x)


def classifier_logits(params, images, batch_size: int = 64, preprocess: bool = True
                      ) -> np.ndarray:
  """[N, num_classes] logits (numpy) of images in [-1, 1]; `params` are the Flax variables."""
  num_classes = params["params"]["fc"]["bias"].shape[0]
  images = np.asarray(images)
  out = []
  for i in range(0, len(images), batch_size):
    batch = images[i:i + batch_size]
    k = len(batch)
    if k < batch_size and len(images) > batch_size:  # pad: one compiled shape
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - k, axis=0)])
    out.append(np.asarray(_logits(params, batch, preprocess, num_classes))[:k])
  return np.concatenate(out, axis=0)


def classifier_accuracy(params, images, labels, topk: int = 1, batch_size: int = 64,
                        preprocess: bool = True) -> float:
  """Fraction of images whose label is among the classifier's top-k classes.

  params: Flax variables from `load_resnet50`; images [N, H, W, 3] in [-1, 1] (any size: they go
  through `preprocess_imagenet`); labels [N] ImageNet class indices.
  """
  logits = classifier_logits(params, images, batch_size, preprocess)
  labels = np.asarray(labels).reshape(-1)
  top = np.argsort(-logits, axis=1)[:, :topk]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))
