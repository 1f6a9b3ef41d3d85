"""Analytic FLOP counts of the ADM UNet forward and of one IBMD round, checked against XLA.

One multiply-add is 2 FLOPs. Per image:
- convolution k x k, Cin -> Cout on an H x W output: 2·H·W·Cin·Cout·k²;
- dense Cin -> Cout on T tokens: 2·T·Cin·Cout;
- attention core over T = H·W tokens and C channels (all heads): Q·Kᵀ 2·T²·C and A·V 2·T²·C,
  4·T²·C in all.
GroupNorm, SiLU, softmax, residual adds and biases are counted apart as `elementwise` (a rough
per-element estimate, in the spirit of XLA's HloCostAnalysis), never in the model FLOPs used for
MFU.

Backward passes, per network, split the forward into W (convolutions + dense: they have weights)
and A (the attention core: no weights):
- forward                         W + A
- backward for the weights too    2W + 2A  (∂/∂input and ∂/∂weights of every W layer; dQ, dK, dV)
- backward for the input only     W + 2A   (the frozen teacher and critic in the generator step)

One IBMD round (ibmd.make_steps: L critic steps, then one generator step; every step sees its own
batch of B images, so per generator image):
- critic step:    generator forward (no gradient)          W + A
                  critic forward + weight backward         3W + 3A    -> 4 forwards
- generator step: generator forward + weight backward      3W + 3A
                  teacher forward + input backward         2W + 3A
                  critic  forward + input backward         2W + 3A    -> 7 forwards (+ 2A)
so a round costs (4L + 7)·F + 2A per generator image: 27 forwards for L = 5, the issue's "about 27
forward-equivalents". Rematerialisation recomputes, in the backward of every differentiated
network (1 per critic step, 3 per generator step), the forward values that backward needs:
per-block `remat='full'` recomputes each ResBlock's first convolution and embedding projection
and each attention block's qkv projection and attention core (a block's last convolution and skip
are not needed by its backward, and JAX does not recompute them: checked against XLA's count),
about half a forward; a whole-network checkpoint ('net:nothing_saveable') recomputes all of it.
That recomputation is reported as hardware FLOPs, never as model FLOPs.

Run as a script for the full-size presets and the XLA agreement check:
  PYTHONPATH=. python bench/flops.py [--check]
"""
from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

# Rough elementwise FLOPs per element, to compare with XLA totals (not part of model FLOPs).
_GN = 7  # x², two reductions, subtract, multiply, scale, shift (stats in float32)
_SILU = 3  # logistic as exp + add + divide, times x
_SOFTMAX = 5  # scale, max, subtract, sum, divide per logit


def _taps(n_out: int, k: int, stride: int) -> int:
  """Kernel taps (summed over n_out output positions of one axis) that land inside the input
  under PyTorch's symmetric padding k // 2: what XLA's cost analysis counts."""
  n_in, pad = n_out * stride, k // 2
  return sum(1 for o in range(n_out) for j in range(k) if 0 <= o * stride - pad + j < n_in)


class _Counter:
  def __init__(self, exact_padding: bool = False):
    self.exact_padding = exact_padding
    self.conv = 0.0
    self.dense = 0.0
    self.attention = 0.0
    self.elementwise = 0.0
    # What per-block remat recomputes: convolutions, dense layers, attention core.
    self.remat_conv = 0.0
    self.remat_dense = 0.0
    self.remat_attention = 0.0

  def conv2d(self, h, w, cin, cout, k, bias=True, stride=1, remat=False):
    """h, w: output size; remat: the per-block remat backward recomputes it."""
    if self.exact_padding:
      f = 2.0 * _taps(h, k, stride) * _taps(w, k, stride) * cin * cout
    else:
      f = 2.0 * h * w * cin * cout * k * k
    self.conv += f
    self.remat_conv += f if remat else 0.0
    if bias:
      self.elementwise += h * w * cout

  def linear(self, tokens, cin, cout, bias=True, remat=False):
    f = 2.0 * tokens * cin * cout
    self.dense += f
    self.remat_dense += f if remat else 0.0
    if bias:
      self.elementwise += tokens * cout

  def elem(self, n):
    self.elementwise += float(n)


def _heads_for(cfg: dict, channels: int, upsample: bool) -> int:
  if cfg.get("num_head_channels", -1) != -1:
    return channels // cfg["num_head_channels"]
  if upsample and cfg.get("num_heads_upsample", -1) != -1:
    return cfg["num_heads_upsample"]
  return cfg.get("num_heads", 4)


def unet_forward_flops(cfg: dict, image_size, in_channels: int, exact_padding: bool = False) -> dict:
  """FLOPs of one UNet forward for ONE image (mirrors ibmd_jax.models.unet.UNet.__call__).

  cfg: UNet fields (a PRESETS entry or a dict with the same keys); image_size: int or (H, W);
  in_channels: width of the first convolution's input (x, plus xT and z channels when
  concatenated). exact_padding=False counts every tap of a padded 3x3 convolution (what
  the hardware multiplies; the model-FLOP convention); True leaves out the taps that fall on the
  zero padding, as XLA's cost analysis does (-8% at 16x16, -0.8% at 256x256).
  """
  h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  mc = int(cfg.get("model_channels", 128))
  mults = tuple(cfg.get("channel_mult", (1, 2, 2)))
  nrb = int(cfg.get("num_res_blocks", 2))
  attn_res = tuple(cfg.get("attention_resolutions", (2, 4)))
  out_ch = int(cfg.get("out_channels", 3))
  ssn = bool(cfg.get("use_scale_shift_norm", True))
  updown = bool(cfg.get("resblock_updown", True))
  ted = 4 * mc
  c = _Counter(exact_padding)

  # Time embedding (float32): Dense(mc -> ted), SiLU, Dense(ted -> ted).
  c.linear(1, mc, ted)
  c.elem(_SILU * ted)
  c.linear(1, ted, ted)

  def resblock(hh, ww, cin, cout, up=False, down=False):
    c.elem((_GN + _SILU) * hh * ww * cin)
    if up:
      hh, ww = 2 * hh, 2 * ww
    elif down:
      c.elem(2 * (hh // 2) * (ww // 2) * cin * 4)  # 2x2 average pools of h and x
      hh, ww = hh // 2, ww // 2
    c.conv2d(hh, ww, cin, cout, 3, remat=True)
    n_emb = 2 * cout if ssn else cout
    c.elem(_SILU * ted)
    c.linear(1, ted, n_emb, remat=True)
    c.elem((_GN + (2 if ssn else 1) + _SILU) * hh * ww * cout)
    c.conv2d(hh, ww, cout, cout, 3)
    if cin != cout:
      c.conv2d(hh, ww, cin, cout, 1)
    c.elem(hh * ww * cout)  # residual add
    return hh, ww

  def attention(hh, ww, ch, upsample=False):
    t = hh * ww
    heads = _heads_for(cfg, ch, upsample)
    c.elem(_GN * t * ch)
    c.linear(t, ch, 3 * ch, remat=True)
    c.attention += 4.0 * t * t * ch
    c.remat_attention += 4.0 * t * t * ch
    c.elem(_SOFTMAX * t * t * heads)
    c.linear(t, ch, ch)
    c.elem(t * ch)  # residual add

  ch = int(mults[0] * mc)
  c.conv2d(h, w, in_channels, ch, 3)
  hs = [ch]
  ds = 1
  for level, mult in enumerate(mults):
    for _ in range(nrb):
      cin, ch = ch, int(mult * mc)
      resblock(h, w, cin, ch)
      if ds in attn_res:
        attention(h, w, ch)
      hs.append(ch)
    if level != len(mults) - 1:
      if updown:
        h, w = resblock(h, w, ch, ch, down=True)
      else:
        c.conv2d(h // 2, w // 2, ch, ch, 3, stride=2)
        h, w = h // 2, w // 2
      hs.append(ch)
      ds *= 2

  resblock(h, w, ch, ch)
  attention(h, w, ch)
  resblock(h, w, ch, ch)

  for level, mult in reversed(list(enumerate(mults))):
    for i in range(nrb + 1):
      cin = ch + hs.pop()
      ch = int(mult * mc)
      resblock(h, w, cin, ch)
      if ds in attn_res:
        attention(h, w, ch, upsample=True)
      if level and i == nrb:
        if updown:
          h, w = resblock(h, w, ch, ch, up=True)
        else:
          c.conv2d(2 * h, 2 * w, ch, ch, 3)
          h, w = 2 * h, 2 * w
        ds //= 2

  c.elem((_GN + _SILU) * h * w * ch)
  c.conv2d(h, w, ch, out_ch, 3)

  weights = c.conv + c.dense
  model = weights + c.attention
  return {"conv": c.conv, "dense": c.dense, "attention": c.attention, "weights": weights,
          "model": model, "elementwise": c.elementwise, "total": model + c.elementwise,
          "remat_full": c.remat_conv + c.remat_dense + c.remat_attention,
          "remat_no_batch_dims": c.remat_conv + c.remat_attention}


def remat_recompute(net: dict, remat: str) -> float:
  """Model FLOPs of one network's forward that rematerialisation `remat` recomputes in its
  backward (per image; net is a unet_forward_flops result).

  Per UNet block: 'full'/'nothing_saveable' recompute what each block's backward needs (first
  convolution, embedding projection, qkv, attention core: net['remat_full']);
  'dots_with_no_batch_dims_saveable' keeps dense-layer outputs, so the convolutions and attention
  core among those (net['remat_no_batch_dims']). Whole network ('net:' prefix): all convolutions,
  dense layers and attention, or all but the dense layers. 'none', 'dots_saveable' (keeps
  convolution and matmul outputs) and 'everything_saveable' recompute only elementwise work."""
  whole = remat.startswith("net:")
  name = remat[4:] if whole else remat
  if name in ("full", "nothing_saveable"):
    return net["weights"] + net["attention"] if whole else net["remat_full"]
  if name == "dots_with_no_batch_dims_saveable":
    return net["conv"] + net["attention"] if whole else net["remat_no_batch_dims"]
  if name in ("none", "dots_saveable", "everything_saveable"):
    return 0.0
  raise ValueError(f"no FLOP model for remat {remat!r}")


def ibmd_round_flops(cfg: dict, image_size, teacher_in: int, gen_in: int, critic_steps: int = 5,
                     batch: int = 1, remat: str = "none", n_steps: int = 1,
                     multistep: str = "full_chain", exact_padding: bool = False) -> dict:
  """Model and hardware FLOPs of one fused IBMD round (L critic steps + 1 generator step).

  teacher_in: first-layer input channels of teacher and critic; gen_in: the generator's (adds the
  z channels). Model FLOPs follow the module docstring; hardware FLOPs add what
  rematerialisation recomputes in each backward (remat_recompute).
  n_steps > 1: 'full_chain' runs and differentiates all N generator calls; 'dmd2' runs N − 1
  calls without gradient and differentiates the last.
  """
  t = unet_forward_flops(cfg, image_size, teacher_in, exact_padding)
  g = unet_forward_flops(cfg, image_size, gen_in, exact_padding)
  fwd = lambda n: n["weights"] + n["attention"]
  bwd_all = lambda n: 2 * n["weights"] + 2 * n["attention"]
  bwd_in = lambda n: n["weights"] + 2 * n["attention"]
  if multistep not in ("full_chain", "dmd2"):
    raise ValueError(f"multistep must be 'full_chain' or 'dmd2', got {multistep!r}")
  n_grad = n_steps if multistep == "full_chain" else 1  # generator calls differentiated
  critic_step = n_steps * fwd(g) + fwd(t) + bwd_all(t)
  gen_step = n_steps * fwd(g) + n_grad * bwd_all(g) + 2 * (fwd(t) + bwd_in(t))
  per_image = critic_steps * critic_step + gen_step
  # Every network that has a backward pass recomputes (part of) its forward in it.
  rt, rg = remat_recompute(t, remat), remat_recompute(g, remat)
  recompute = critic_steps * rt + n_grad * rg + 2 * rt
  return {
      "forward_teacher": fwd(t),
      "forward_generator": fwd(g),
      "critic_step_per_image": critic_step,
      "generator_step_per_image": gen_step,
      "model_flops_per_gen_image": per_image,
      "hardware_flops_per_gen_image": per_image + recompute,
      "forward_equivalents": per_image / fwd(t),
      "forward_equivalents_simple": (3 + n_steps) * critic_steps + n_steps + 2 * n_grad + 4,
      "hardware_forward_equivalents": (per_image + recompute) / fwd(t),
      "model_flops_per_round": batch * per_image,
      "hardware_flops_per_round": batch * (per_image + recompute),
  }


# ---------------------------------------------------------------------- XLA cross-check
TINY_CHECK = dict(model_channels=64, out_channels=3, num_res_blocks=1, attention_resolutions=(2,),
                  channel_mult=(1, 2), num_heads=2, num_head_channels=-1, num_heads_upsample=-1,
                  use_scale_shift_norm=True, resblock_updown=True, attention_layout="legacy")


def xla_forward_flops(cfg: dict, image_size: int, in_channels: int, batch: int = 2) -> float:
  """XLA's cost_analysis()['flops'] for one float32 UNet forward, per image (CPU: convolutions
  are HLO convolutions and counted; on GPU they become cuDNN custom calls and may not be)."""
  import jax
  import jax.numpy as jnp

  from ibmd_jax.models.unet import UNet

  fields = {k: v for k, v in cfg.items() if k not in ("image_size",)}
  net = UNet(**fields, dtype=jnp.float32)
  x = jnp.zeros((batch, image_size, image_size, in_channels), jnp.float32)
  t = jnp.ones((batch,), jnp.float32)
  params = jax.eval_shape(lambda: net.init(jax.random.key(0), x, t))
  fn = jax.jit(lambda p, x, t: net.apply(p, x, t))
  cost = fn.lower(params, x, t).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per computation
    cost = cost[0]
  return float(cost["flops"]) / batch


def check_against_xla(cfg: Optional[dict] = None, image_size: int = 16, in_channels: int = 6,
                      batch: int = 2) -> dict:
  """Analytic vs XLA forward FLOPs for a small UNet; ratios near 1 mean the walk is right."""
  cfg = dict(TINY_CHECK if cfg is None else cfg)
  ana = unet_forward_flops(cfg, image_size, in_channels)
  exact = unet_forward_flops(cfg, image_size, in_channels, exact_padding=True)
  xla = xla_forward_flops(cfg, image_size, in_channels, batch)
  return {"config": {**cfg, "image_size": image_size, "in_channels": in_channels},
          "analytic_model": ana["model"], "analytic_model_exact_padding": exact["model"],
          "analytic_total_exact_padding": exact["total"], "xla_flops": xla,
          "xla_over_model": xla / ana["model"],
          "xla_over_model_exact_padding": xla / exact["model"],
          "xla_over_total_exact_padding": xla / exact["total"]}


def _fmt(x: float) -> str:
  return f"{x / 1e9:,.1f} GFLOP"


def main(argv: Optional[Sequence[str]] = None):
  from ibmd_jax.models.unet import PRESET_IN_CHANNELS, PRESETS

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--critic_steps", type=int, default=5)
  p.add_argument("--z_channels", type=int, default=3)
  p.add_argument("--check", action="store_true", help="compare with XLA cost analysis (CPU)")
  p.add_argument("--out", default=None, help="JSON output path")
  args = p.parse_args(argv)
  res = {"presets": {}}
  for name, cfg in PRESETS.items():
    size, cin = cfg["image_size"], PRESET_IN_CHANNELS[name]
    fwd = unet_forward_flops(cfg, size, cin)
    rnd = ibmd_round_flops(cfg, size, cin, cin + args.z_channels, args.critic_steps)
    res["presets"][name] = {"forward": fwd, "round": rnd}
    print(f"{name}: forward {_fmt(fwd['model'])}/image (conv {fwd['conv'] / fwd['model']:.1%}, "
          f"attention {fwd['attention'] / fwd['model']:.1%}, elementwise extra "
          f"{fwd['elementwise'] / fwd['model']:.1%}); round {_fmt(rnd['model_flops_per_gen_image'])}"
          f"/generator image = {rnd['forward_equivalents']:.2f} forwards "
          f"({rnd['forward_equivalents_simple']} simple)")
  if args.check:
    chk = check_against_xla()
    res["xla_check"] = chk
    print(f"XLA check (tiny UNet, CPU): xla/model = {chk['xla_over_model']:.3f}; with the "
          f"padding taps left out as XLA does: xla/model = "
          f"{chk['xla_over_model_exact_padding']:.3f}, xla/(model + elementwise) = "
          f"{chk['xla_over_total_exact_padding']:.3f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=2)
  return res


if __name__ == "__main__":
  main()
