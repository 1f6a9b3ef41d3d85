"""The CPU benchmark of the UNets we train on the CPU: teacher step and IBMD round, A/B interleaved.

For each network (the 32x32 benchmark UNet of configs/bench64.py:sr4,cpu32 and the 16x16 UNet of
the tiny test configs, configs/images.py's `shrink`) and each variant of the model's compute
options (e.g. conv_grad=xla | matmul | fast), this compiles the library's own teacher step
(steps.make_teacher_step, the config's batch, Adam) and fused IBMD round (steps.make_ibmd_steps,
the config's distillation batch and critic steps), then times them in rounds that alternate the
variants (A, B, A, B, ...) so that load from other processes on a shared machine falls on all of
them alike; min and median over the rounds are reported. FLOPs are analytic (bench/flops.py):
a teacher step is 3 forwards (forward + weight and input gradients) per image, a round as
flops.ibmd_round_flops. The share of the ceiling divides the achieved rate by the fp32 matmul
rate measured in the same process (bench/common.measure_matmul_peak, n = 2048).

All variants start from the same parameters and batches, and the script checks that their first
step's losses agree (relative difference reported as `loss_rel_diff`).

  PYTHONPATH=. python bench/cpu_unet.py --nets cpu32,tiny --variants xla,matmul,fast \\
      --repeats 5 --out docs/results/cpu_unet.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bench import common, flops
from configs import bench64, images
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import steps
from ibmd_jax.optim import make_optimizer
from ibmd_jax.tasks.images import ImageTask

NETS = {
    # the 2-core benchmark network of docs/results.md: 32x32, 32 channels, levels 32/16/8
    "cpu32": lambda: bench64.get_config("sr4,cpu32"),
    # the tiny test configs' network (configs/images.py shrink): 16x16, 32 channels, 2 levels
    "tiny": lambda: bench64.get_config("sr4,tiny"),
}


def _config(net: str, variant: str):
  """variant: '+'-joined model options (key=value, or a bare conv_grad value); 'scan' / 'unroll'
  pick the round's critic loop (steps.make_ibmd_steps critic_unroll; default: the library's)."""
  c = NETS[net]()
  for kv in variant.split("+"):
    if kv in ("scan", "unroll"):
      continue
    key, _, val = kv.partition("=")
    if not _:
      key, val = "conv_grad", kv
    c.model[key] = val
  return c


class Bench:
  """One network and one variant: the compiled teacher step and IBMD round, with their inputs."""

  def __init__(self, net: str, variant: str, teacher_batch: int, round_batch: int, seed: int,
               compile: bool = True):  # pylint: disable=redefined-builtin
    # compile=False: the step functions (teacher_step_fn, round_fn) and their inputs only, for a
    # caller that compiles them itself (bench/cpu_host_devices.py, with shardings)
    c = _config(net, variant)
    self.config = c
    self.task = ImageTask(c)
    self.net, bridge = self.task.net, self.task.bridge
    size, ch = int(c.data.image_size), int(c.data.channels)
    key = jax.random.key(seed)
    self.tb = teacher_batch or int(c.teacher.batch_size)
    self.rb = round_batch or int(c.distill.batch_size)
    self.L = int(c.distill.critic_steps)
    zc = int(c.distill.z_channels)
    self.z = ch if zc < 0 else zc
    self.in_ch = ch * (2 if self.task.conditional else 1)
    x = jnp.zeros((2, size, size, ch), jnp.float32)
    params = self.net.init(jax.random.fold_in(key, 0), x)
    gen = self.net.init(jax.random.fold_in(key, 1), x, z_channels=self.z)
    # non-zero residual branches, so that every convolution's gradient is exercised
    params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(7), p.shape), params)
    gen = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(8), p.shape), gen)
    tx = make_optimizer({"name": "adam", "lr": 1e-4})
    self.teacher_step_fn = steps.make_teacher_step(self.net, bridge, tx)
    self.tstep = jax.jit(self.teacher_step_fn)
    self.tstate = steps.teacher_state(params, tx)
    kb = jax.random.fold_in(key, 2)
    self.tbatch = {"x0": jax.random.normal(kb, (self.tb, size, size, ch)),
                   "xT": jax.random.normal(jax.random.fold_in(kb, 1), (self.tb, size, size, ch))}
    ib = ibmd_lib.IBMD(bridge=bridge, teacher=self.net, critic=self.net, generator=self.net,
                       z_channels=self.z)
    parts = variant.split("+")
    unroll = True if "unroll" in parts else False if "scan" in parts else None
    _, _, self.round_fn = steps.make_ibmd_steps(ib, tx, tx, critic_unroll=unroll)
    self.round = jax.jit(self.round_fn)
    self.teacher = params
    self.istate = steps.ibmd_state(gen, params, tx, tx)
    self.rbatch = {"xT": jax.random.normal(jax.random.fold_in(kb, 2),
                                           (self.L + 1, self.rb, size, size, ch))}
    self.key = jax.random.fold_in(key, 3)
    self.cfg = dict(c.model)
    self.size, self.ch = size, ch
    if not compile:
      return
    t0 = time.perf_counter()
    self.tstep = self.tstep.lower(self.tstate, self.tbatch, self.key).compile()
    self.round = self.round.lower(self.istate, self.teacher, self.rbatch, self.key).compile()
    self.compile_s = time.perf_counter() - t0

  def teacher_step(self):
    return self.tstep(self.tstate, self.tbatch, self.key)  # same state each time: no drift

  def ibmd_round(self):
    return self.round(self.istate, self.teacher, self.rbatch, self.key)

  def flops(self) -> dict:
    fwd = flops.unet_forward_flops(self.cfg, self.size, self.in_ch)
    rnd = flops.ibmd_round_flops(self.cfg, self.size, self.in_ch, self.in_ch + self.z, self.L,
                                 self.rb)
    return {"forward_per_image": fwd["model"], "teacher_step": 3 * fwd["model"] * self.tb,
            "ibmd_round": rnd["model_flops_per_round"]}


def _time(fn, n: int) -> float:
  """Seconds per call: n calls back to back, each waited for."""
  t0 = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t0) / n


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--nets", default="cpu32,tiny", help=f"comma-separated, from {sorted(NETS)}")
  p.add_argument("--variants", default="xla,matmul",
                 help="comma-separated model compute options: a conv_grad value, or "
                 "key=value[+key=value] on config.model")
  p.add_argument("--repeats", type=int, default=5, help="interleaved rounds of timing")
  p.add_argument("--calls", type=int, default=2, help="calls per timing (teacher steps)")
  p.add_argument("--round_calls", type=int, default=1, help="calls per timing (IBMD rounds)")
  p.add_argument("--teacher_batch", type=int, default=0, help="0: the config's")
  p.add_argument("--round_batch", type=int, default=0, help="0: the config's")
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  out = {"device": common.device_info(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "args": vars(args), "nets": {}}
  mm = common.measure_matmul_peak(args.matmul_n, "f32", chain=4, repeats=5)
  out["matmul"] = mm
  rows = ["| net | variant | teacher B | teacher step s (min / median) | GFLOP/s | share of "
          "matmul | round B, L | IBMD round s (min / median) | GFLOP/s | share of matmul | "
          "compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for net in [n for n in args.nets.split(",") if n]:
    benches = {v: Bench(net, v, args.teacher_batch, args.round_batch, args.seed)
               for v in variants}
    losses = {}
    for v, b in benches.items():
      _, m = b.teacher_step()
      _, r = b.ibmd_round()
      losses[v] = {"teacher_loss": float(m["loss"]), "gen_loss": float(r["gen_loss"]),
                   "critic_loss": float(r["critic_loss"])}
    times = {v: {"teacher_step": [], "ibmd_round": []} for v in variants}
    mms = []
    for _ in range(args.repeats):
      for v, b in benches.items():
        times[v]["teacher_step"].append(_time(b.teacher_step, args.calls))
        times[v]["ibmd_round"].append(_time(b.ibmd_round, args.round_calls))
      mms.append(common.measure_matmul_peak(args.matmul_n, "f32", chain=2, repeats=1)["tflops"])
    peak = max(mm["tflops"], max(mms)) * 1e3  # GFLOP/s: the best this run saw
    res = {"matmul_gflops_during": [1e3 * x for x in mms], "matmul_gflops": peak, "variants": {}}
    ref = losses[variants[0]]
    for v, b in benches.items():
      fl = b.flops()
      r = {"compile_s": b.compile_s, "teacher_batch": b.tb, "round_batch": b.rb,
           "critic_steps": b.L, "flops": fl, "losses": losses[v],
           "loss_rel_diff": max(abs(losses[v][k] - ref[k]) / max(abs(ref[k]), 1e-12)
                                for k in ref)}
      for what in ("teacher_step", "ibmd_round"):
        ts = times[v][what]
        r[what] = {"min_s": min(ts), "median_s": statistics.median(ts), "max_s": max(ts),
                   "all_s": ts, "gflops_at_min": fl[what] / min(ts) / 1e9,
                   "share_of_matmul_at_min": fl[what] / min(ts) / 1e9 / peak}
      res["variants"][v] = r
      t, rd = r["teacher_step"], r["ibmd_round"]
      rows.append(f"| {net} | {v} | {b.tb} | {t['min_s']:.3f} / {t['median_s']:.3f} | "
                  f"{t['gflops_at_min']:.1f} | {t['share_of_matmul_at_min']:.0%} | {b.rb}, {b.L} | "
                  f"{rd['min_s']:.3f} / {rd['median_s']:.3f} | {rd['gflops_at_min']:.1f} | "
                  f"{rd['share_of_matmul_at_min']:.0%} | {b.compile_s:.0f} |")
      print(rows[-1], flush=True)
    base = variants[0]
    for v in variants[1:]:
      res["variants"][v]["speedup_vs_" + base] = {
          w: res["variants"][base][w]["min_s"] / res["variants"][v][w]["min_s"]
          for w in ("teacher_step", "ibmd_round")}
    out["nets"][net] = res
    del benches
  rows.append("")
  rows.append(f"fp32 matmul ceiling (n = {args.matmul_n}, best seen in the run): "
              f"{max(r['matmul_gflops'] for r in out['nets'].values()):.1f} GFLOP/s")
  common.write_json(args.out, out)
  common.write_markdown(args.out, rows, title="CPU UNet benchmark (bench/cpu_unet.py)")
  print("\n".join(rows[-2:]), flush=True)
  return out


if __name__ == "__main__":
  main()
