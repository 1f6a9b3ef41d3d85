"""ADM (guided-diffusion) UNet in Flax, parameter-compatible with the I2SB / DDBM / DBIM teachers.

Follows ``ibmd_jax.models`` calling convention: NHWC inputs, ``[x, cond, z]`` concatenated on
channels before the first convolution (so its input width is inferred), ``c_noise`` fed raw into
guided-diffusion's sinusoidal ``timestep_embedding``.

Module and parameter names mirror the PyTorch state-dict keys with the numeric indices folded in
(``input_blocks.4.1.qkv.weight`` -> ``input_blocks_4_1/qkv/kernel``) so that ``ibmd_jax.convert``
is a mechanical renaming plus layout transposes.

Precision follows guided-diffusion's fp16 mode: the time embedding, the label embedding, every
GroupNorm and the output head run in float32; the body runs in ``dtype``; params are float32.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ibmd_jax.models.conv import conv_fn
from ibmd_jax.models.mlp import timestep_embedding

ATTENTION_LAYOUTS = ("legacy", "qkv_first")
# Per-block rematerialisation: 'none' keeps every activation for the backward pass; 'full' keeps
# only each ResBlock / AttentionBlock's inputs and recomputes, in the block's backward, what that
# backward needs (about 0.6 of a forward for the ADM presets, bench/flops.py); a
# jax.checkpoint_policies name keeps what the policy saves and recomputes the rest
# ('dots_saveable': convolution and matmul outputs kept, norms and activations recomputed).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "nothing_saveable", "everything_saveable")


def remat_policy(remat) -> tuple:
  """(rematerialise?, jax.checkpoint policy or None) for UNet.remat (a bool or a policy name)."""
  if remat is False or remat is None or remat == "none":
    return False, None
  if remat is True or remat in ("full", "nothing_saveable"):
    return True, None  # nn.remat without a policy saves nothing
  if isinstance(remat, str) and remat in REMAT_POLICIES:
    return True, getattr(jax.checkpoint_policies, remat)
  raise ValueError(f"UNet remat must be a bool or one of {REMAT_POLICIES}, got {remat!r}")


def _conv(features: int, kernel: int, name: str, dtype: Any, zero: bool = False,
          conv_grad: str = "xla") -> nn.Conv:
  """A 'same' convolution with PyTorch's symmetric padding (kernel 1 or 3).

  zero=True is guided-diffusion's zero_module: residual branches and the head start at zero.
  conv_grad: how the weight gradient is computed (ibmd_jax/models/conv.py; 'matmul' on CPU).
  """
  pad = kernel // 2
  init = nn.initializers.zeros if zero else nn.linear.default_kernel_init
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype,
                 kernel_init=init, conv_general_dilated=conv_fn(conv_grad), name=name)


def _norm(name: str) -> nn.GroupNorm:
  """guided-diffusion GroupNorm32: 32 groups, eps 1e-5, float32 statistics.

  A bare nn.GroupNorm keeps the parameter path flat (<name>/scale, <name>/bias); the float32 cast
  around it is `_group_norm`.
  """
  return nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=jnp.float32, name=name)


def _group_norm(module: nn.GroupNorm, x):
  """Normalises in float32 whatever the compute dtype, returns x's dtype."""
  return module(x.astype(jnp.float32)).astype(x.dtype)


def _upsample(x):
  """Nearest-neighbour x2 on H and W: [B, H, W, C] -> [B, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample(x):
  """2x2 average pool, stride 2 (PyTorch avg_pool2d floors odd sizes, as VALID does)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Downsample(nn.Module):
  """guided-diffusion Downsample with conv_resample (resblock_updown=False): 3x3 conv, stride 2."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                   dtype=self.dtype, name="op")(x)


class Upsample(nn.Module):
  """guided-diffusion Upsample with conv_resample (resblock_updown=False): nearest x2, 3x3 conv."""

  channels: int
  dtype: Any = jnp.float32
  conv_grad: str = "xla"

  @nn.compact
  def __call__(self, x):
    return _conv(self.channels, 3, "conv", self.dtype, conv_grad=self.conv_grad)(_upsample(x))


class ResBlock(nn.Module):
  """guided-diffusion ResBlock: GN-SiLU-conv, time/label modulation, GN-SiLU-dropout-conv, skip."""

  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = True
  up: bool = False
  down: bool = False
  deterministic: bool = True  # a field, not a call argument, so nn.remat needs no static args
  dtype: Any = jnp.float32
  conv_grad: str = "xla"

  @nn.compact
  def __call__(self, x, emb):
    # x: [B, H, W, Cin], emb: [B, E] float32
    h = nn.silu(_group_norm(_norm("in_layers_0"), x))
    if self.up or self.down:
      resample = _upsample if self.up else _downsample
      h, x = resample(h), resample(x)
    h = _conv(self.out_channels, 3, "in_layers_2", self.dtype, conv_grad=self.conv_grad)(h)

    n_emb = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    emb_out = nn.Dense(n_emb, dtype=self.dtype, name="emb_layers_1")(nn.silu(emb))
    emb_out = emb_out.astype(h.dtype)[:, None, None, :]  # [B, 1, 1, n_emb]
    out_norm = _norm("out_layers_0")
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = _group_norm(out_norm, h) * (1 + scale) + shift
    else:
      h = _group_norm(out_norm, h + emb_out)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(nn.silu(h))
    h = _conv(self.out_channels, 3, "out_layers_3", self.dtype, zero=True,
              conv_grad=self.conv_grad)(h)

    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "skip_connection", self.dtype, conv_grad=self.conv_grad)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Self-attention over H*W positions; qkv and proj_out are the PyTorch 1x1 convs as Dense.

  layout 'legacy': qkv channels are (heads, [q, k, v], head_dim) as QKVAttentionLegacy;
  layout 'qkv_first': ([q, k, v], heads, head_dim) as QKVAttention / DDBM flash attention.
  Both use the exact softmax with scale 1/sqrt(head_dim).
  """

  num_heads: int
  layout: str = "legacy"
  attention_impl: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"attention over {c} channels cannot be split into {self.num_heads} heads")
    d = c // self.num_heads
    h = _group_norm(_norm("norm"), x).reshape(b, hh * ww, c)  # [B, T, C]
    qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(h)  # [B, T, 3C]
    if self.layout == "legacy":
      qkv = qkv.reshape(b, hh * ww, self.num_heads, 3, d)
      q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]  # [B, T, N, D] each
    elif self.layout == "qkv_first":
      qkv = qkv.reshape(b, hh * ww, 3, self.num_heads, d)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      raise ValueError(f"attention_layout must be one of {ATTENTION_LAYOUTS}, got {self.layout!r}")
    a = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)  # [B, T, N, D]
    a = a.reshape(b, hh * ww, c)
    a = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(a)
    return x + a.reshape(b, hh, ww, c)


class UNet(nn.Module):
  """guided-diffusion UNetModel (no learned sigma; out_channels as given).

  attention_resolutions holds downsample factors ds (1 = input resolution, 2 = half, ...), the
  list guided-diffusion's UNetModel receives internally; its script_util converts image
  resolutions r to ds = image_size // r (e.g. '32,16,8' at 256 -> (8, 16, 32)). The fixtures'
  ``kwargs`` already hold ds factors.
  """

  model_channels: int = 128
  out_channels: int = 3
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (2, 4)
  channel_mult: Sequence[int] = (1, 2, 2)
  dropout: float = 0.0
  num_classes: Optional[int] = None
  num_heads: int = 4
  num_head_channels: int = -1
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  attention_layout: str = "legacy"
  image_size: int = 256  # informational (guided-diffusion keeps it too); any divisible size runs
  dtype: Any = jnp.float32
  remat: Any = False  # False/'none', True/'full', or a policy name in REMAT_POLICIES
  attention_impl: Optional[str] = None
  conv_grad: str = "xla"  # 'matmul': the weight gradient as matmuls, ~3x faster on CPU (conv.py)

  def heads_for(self, channels: int, upsample: bool) -> int:
    """Attention heads at a block of `channels` (num_head_channels wins over num_heads)."""
    if self.num_head_channels != -1:
      if channels % self.num_head_channels:
        raise ValueError(f"{channels} channels are not a multiple of num_head_channels="
                         f"{self.num_head_channels}")
      return channels // self.num_head_channels
    if upsample and self.num_heads_upsample != -1:
      return self.num_heads_upsample
    return self.num_heads

  @nn.compact
  def __call__(self, x, c_noise, cond=None, z=None, label=None, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"UNet expects NHWC images [B, H, W, C], got shape {x.shape}")
    if self.attention_layout not in ATTENTION_LAYOUTS:
      raise ValueError(f"attention_layout must be one of {ATTENTION_LAYOUTS}, "
                       f"got {self.attention_layout!r}")
    levels = len(self.channel_mult)
    factor = 2 ** (levels - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"image size {x.shape[1:3]} must be divisible by {factor} "
                       f"(channel_mult has {levels} levels)")
    for name, part in (("cond", cond), ("z", z)):
      if part is not None and part.shape[:3] != x.shape[:3]:
        raise ValueError(f"{name} shape {part.shape} does not match x {x.shape} in [B, H, W]")
    if c_noise.shape != (x.shape[0],):
      raise ValueError(f"c_noise must have shape [B]=({x.shape[0]},), got {c_noise.shape}")

    res_cls, attn_cls = ResBlock, AttentionBlock
    use_remat, policy = remat_policy(self.remat)
    if use_remat:
      res_cls = nn.remat(ResBlock, policy=policy)
      attn_cls = nn.remat(AttentionBlock, policy=policy)

    def res(out_ch, name, up=False, down=False):
      return res_cls(out_ch, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                     up=up, down=down, deterministic=not train, dtype=self.dtype,
                     conv_grad=self.conv_grad, name=name)

    def attn(ch, name, upsample=False):
      return attn_cls(self.heads_for(ch, upsample), layout=self.attention_layout,
                      attention_impl=self.attention_impl, dtype=self.dtype, name=name)

    # Time (and label) embedding in float32, as guided-diffusion keeps time_embed out of fp16.
    mc, ted = self.model_channels, 4 * self.model_channels
    emb = timestep_embedding(c_noise, mc)  # [B, mc]
    emb = nn.Dense(ted, name="time_embed_0")(emb)
    emb = nn.Dense(ted, name="time_embed_2")(nn.silu(emb))  # [B, ted]
    if self.num_classes is not None:
      if label is None:
        raise ValueError(f"this UNet is class-conditional (num_classes={self.num_classes}): "
                         "pass label")
      emb = emb + nn.Embed(self.num_classes, ted, name="label_emb")(label)

    parts = [x] + [p for p in (cond, z) if p is not None]
    h = jnp.concatenate(parts, axis=-1).astype(self.dtype)  # [B, H, W, Cin]

    # Encoder: hs collects every block output for the skip connections.
    ch = int(self.channel_mult[0] * mc)
    h = _conv(ch, 3, "input_blocks_0_0", self.dtype, conv_grad=self.conv_grad)(h)
    hs, chans = [h], [ch]
    ds, idx = 1, 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        ch = int(mult * mc)
        h = res(ch, f"input_blocks_{idx}_0")(h, emb)
        if ds in self.attention_resolutions:
          h = attn(ch, f"input_blocks_{idx}_1")(h)
        hs.append(h)
        chans.append(ch)
        idx += 1
      if level != levels - 1:
        if self.resblock_updown:
          h = res(ch, f"input_blocks_{idx}_0", down=True)(h, emb)
        else:
          h = Downsample(ch, dtype=self.dtype, name=f"input_blocks_{idx}_0")(h)
        hs.append(h)
        chans.append(ch)
        idx += 1
        ds *= 2

    h = res(ch, "middle_block_0")(h, emb)
    h = attn(ch, "middle_block_1")(h)
    h = res(ch, "middle_block_2")(h, emb)

    # Decoder: num_res_blocks + 1 blocks per level, each eating one skip.
    idx = 0
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        chans.pop()
        ch = int(mult * mc)
        h = res(ch, f"output_blocks_{idx}_0")(h, emb)
        j = 1
        if ds in self.attention_resolutions:
          h = attn(ch, f"output_blocks_{idx}_{j}", upsample=True)(h)
          j += 1
        if level and i == self.num_res_blocks:
          if self.resblock_updown:
            h = res(ch, f"output_blocks_{idx}_{j}", up=True)(h, emb)
          else:
            h = Upsample(ch, dtype=self.dtype, conv_grad=self.conv_grad,
                         name=f"output_blocks_{idx}_{j}")(h)
          ds //= 2
        idx += 1

    # Output head in float32 (guided-diffusion casts back before self.out).
    h = nn.silu(_group_norm(_norm("out_0"), h.astype(jnp.float32)))
    return _conv(self.out_channels, 3, "out_2", jnp.float32, zero=True,
                 conv_grad=self.conv_grad)(h)


def _preset(**kw) -> dict:
  base = dict(model_channels=256, out_channels=3, num_res_blocks=2,
              attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), dropout=0.0,
              num_classes=None, num_heads=4, num_head_channels=64, num_heads_upsample=-1,
              use_scale_shift_norm=True, resblock_updown=True, attention_layout="legacy",
              image_size=256)
  base.update(kw)
  return base


# Full-size teacher configs, read off the official state dicts (/work/shared/fixtures/*.keys.json).
# attention_resolutions are ds factors: (8, 16, 32) at 256 = resolutions 32, 16, 8;
# (2, 4, 8) at 64 = resolutions 32, 16, 8.
PRESETS = {
    # I2SB: ADM ImageNet-256 unconditional (fixed sigma: 3 out channels), x only.
    "i2sb_imagenet256": _preset(),
    # DDBM edges2handbags 64: xT concatenated on channels (6 input channels).
    "ddbm_e2h64": _preset(model_channels=192, num_res_blocks=3, attention_resolutions=(2, 4, 8),
                          channel_mult=(1, 2, 3, 4), attention_layout="qkv_first", image_size=64),
    # DDBM DIODE 256: xT concatenated (6 input channels).
    "ddbm_diode256": _preset(attention_layout="qkv_first"),
    # DBIM ImageNet-256 inpainting (DDBM code): class-conditional, xT concatenated.
    "dbim_imagenet256_inpaint": _preset(num_classes=1000, attention_layout="qkv_first"),
}

# Input channels of each preset's first convolution (x, plus xT when the family concatenates it).
PRESET_IN_CHANNELS = {
    "i2sb_imagenet256": 3,
    "ddbm_e2h64": 6,
    "ddbm_diode256": 6,
    "dbim_imagenet256_inpaint": 6,
}
