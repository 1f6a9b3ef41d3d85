"""Times one IBMD training round (L critic steps + 1 generator step) for a UNet preset.

Teacher, critic and generator are the preset's UNet with random weights (timing does not depend
on the values); the generator has `--z_channels` extra noise inputs. Reports compile time (trace
+ lower and XLA compile apart, with the persistent cache's hit or miss), the median round time
after warm-up, generator images/s (B / round), critic images/s (L·B / round), peak device memory
and MFU = analytic model FLOPs per round (bench/flops.py) / round time / matmul peak.

  # CPU smoke
  PYTHONPATH=. python bench/ibmd_round.py --preset tiny --batch 2 --critic_steps 2 --steps 2 \\
      --dtype f32 --out /tmp/round.json
  # GPU
  PYTHONPATH=. python bench/ibmd_round.py --preset i2sb_imagenet256 --sweep_batch 4,8,16 \\
      --remat full --steps 5 --cache_dir /tmp/jax_cache --out /tmp/round_i2sb.json
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import common, flops
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import steps
from ibmd_jax.optim import make_optimizer


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="tiny", choices=sorted(common.SETUPS))
  p.add_argument("--tiny", action="store_true", help="same as --preset tiny")
  p.add_argument("--image_size", type=int, default=0, help="0: the preset's")
  p.add_argument("--batch", type=int, default=4, help="generator batch B (each critic step too)")
  p.add_argument("--sweep_batch", default="", help="e.g. 4,8,16: one compile per batch size, "
                 "ascending; an OOM is recorded and ends the sweep")
  p.add_argument("--dtype", default="bf16", choices=sorted(common.DTYPES))
  p.add_argument("--remat", default="none", help="per UNet block: none | full | dots_saveable | "
                 "dots_with_no_batch_dims_saveable (the library's model.remat); or "
                 "net:<jax.checkpoint_policies name> around each whole network call")
  p.add_argument("--attention", default="xla", help="jax.nn.dot_product_attention "
                 "implementation: xla | cudnn | default (JAX picks)")
  p.add_argument("--critic_steps", type=int, default=5, help="L")
  p.add_argument("--n_steps", type=int, default=1, help="generator steps N")
  p.add_argument("--multistep", default="full_chain", choices=["full_chain", "dmd2"])
  p.add_argument("--z_channels", type=int, default=3)
  p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"],
                 help="generator and critic optimiser (adam: the paper's)")
  p.add_argument("--lr", type=float, default=1e-5)
  p.add_argument("--steps", type=int, default=5, help="timed rounds")
  p.add_argument("--warmup", type=int, default=2, help="untimed rounds after compiling")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--fused", dest="fused", action="store_true", default=True,
                    help="one jitted round: lax.scan over L critic steps + generator step")
  mode.add_argument("--separate", dest="fused", action="store_false",
                    help="critic_step and generator_step jitted apart, a Python loop")
  p.add_argument("--cache_dir", default="", help="persistent compilation cache directory (every "
                 "program is written; a second process with the same directory reports hits)")
  p.add_argument("--compile_only", action="store_true",
                 help="compile (and record compile time and cache hits) without running rounds")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="MFU denominator; 0 measures a dense matmul on this device first")
  p.add_argument("--xla_cost", default="auto", choices=["auto", "on", "off"],
                 help="also compile critic_step and generator_step alone for XLA's FLOP count "
                 "(auto: on CPU only; XLA counts a loop body once, so the fused round cannot be "
                 "used)")
  p.add_argument("--time_budget_s", type=float, default=0.0,
                 help="stop starting new batch sizes when this many seconds are used (0: none)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="JSON path (rewritten after every batch size)")
  args = p.parse_args(argv)
  if args.tiny:
    args.preset = "tiny"
  return args


class RoundBench:
  """Networks, optimisers and state for one preset; compiles and times rounds per batch size."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.setup = common.Setup(args.preset, args.dtype, args.remat, args.attention,
                              args.image_size or None)
    predict = self.setup.predictor()
    self.ibmd = ibmd_lib.IBMD(bridge=self.setup.bridge, teacher=predict, critic=predict,
                              generator=predict, z_channels=args.z_channels,
                              n_steps=args.n_steps, multistep=args.multistep)
    if args.optimizer == "sgd":
      self.gen_tx, self.critic_tx = optax.sgd(args.lr), optax.sgd(args.lr)
    else:
      opt = {"name": args.optimizer, "lr": args.lr}
      self.gen_tx, self.critic_tx = make_optimizer(opt), make_optimizer(opt)
    self.critic_step, self.generator_step, self.round_step = steps.make_ibmd_steps(
        self.ibmd, self.gen_tx, self.critic_tx)
    t0 = time.perf_counter()
    key = jax.random.key(args.seed)
    self.teacher = self.setup.random_params(jax.random.fold_in(key, 0))
    self.state = self.make_state()
    jax.block_until_ready((self.teacher, self.state))
    self.init_s = time.perf_counter() - t0
    self.n_params = common.param_count(self.teacher)
    self.n_params_gen = common.param_count(self.state.gen)

  def make_state(self):
    key = jax.random.fold_in(jax.random.key(self.args.seed), 1)
    gen = self.setup.random_params(key, self.args.z_channels)
    # The critic starts from the teacher (own copy: the round donates the state).
    return steps.ibmd_state(gen, self.teacher, self.gen_tx, self.critic_tx)

  def state_alive(self) -> bool:
    return not any(x.is_deleted() for x in jax.tree.leaves(self.state))

  def batches(self, batch: int):
    """[L + 1, B, H, W, C] xT on the device (fresh per step, as Algorithm 1), + labels."""
    n = self.args.critic_steps + 1
    key = jax.random.fold_in(jax.random.key(self.args.seed), 2)
    out = {"xT": jax.random.normal(key, (n,) + self.setup.shape(batch), jnp.float32)}
    if self.setup.num_classes is not None:
      out["label"] = jnp.zeros((n, batch), jnp.int32)
    return out

  def flops(self, batch: int, exact_padding: bool = False) -> dict:
    s = self.setup
    return flops.ibmd_round_flops(s.unet_cfg, s.image_size, s.teacher_in,
                                  s.teacher_in + self.args.z_channels, self.args.critic_steps,
                                  batch, self.args.remat, self.args.n_steps,
                                  self.args.multistep, exact_padding)

  # ------------------------------------------------------------------ one batch size
  def compile(self, batch: int):
    """Returns (run_round, info): run_round() advances self.state by one round."""
    a = self.args
    batches = self.batches(batch)
    key = jax.random.key(a.seed + 3)
    if a.fused:
      jitted = jax.jit(self.round_step, donate_argnums=0)
      compiled, info = common.timed_compile(jitted, self.state, self.teacher, batches, key,
                                            cache_dir=a.cache_dir)
      info["memory_analysis"] = common.compiled_memory(compiled)

      def run_round():
        self.state, m = compiled(self.state, self.teacher, batches, key)
        return m

      return run_round, info

    L = a.critic_steps
    per_step = [jax.tree.map(lambda b, i=i: b[i], batches) for i in range(L + 1)]
    keys = [jax.random.fold_in(key, i) for i in range(L + 1)]
    c_comp, c_info = common.timed_compile(jax.jit(self.critic_step, donate_argnums=0),
                                          self.state, per_step[0], keys[0],
                                          cache_dir=a.cache_dir)
    g_comp, g_info = common.timed_compile(jax.jit(self.generator_step, donate_argnums=0),
                                          self.state, self.teacher, per_step[L], keys[L],
                                          cache_dir=a.cache_dir)
    info = {"lower_s": c_info["lower_s"] + g_info["lower_s"],
            "compile_s": c_info["compile_s"] + g_info["compile_s"],
            "critic_step": c_info, "generator_step": g_info,
            "memory_analysis": {"critic_step": common.compiled_memory(c_comp),
                                "generator_step": common.compiled_memory(g_comp)}}
    fc, fg = common.xla_flops(c_comp), common.xla_flops(g_comp)
    if fc is not None and fg is not None and not (a.n_steps > 1 and a.multistep == "dmd2"):
      info["_xla_flops"] = L * fc + fg  # these very programs, no loop: XLA counts all of it
    if a.cache_dir:
      info["cache_hit"] = bool(c_info.get("cache_hit")) and bool(g_info.get("cache_hit"))

    def run_round():
      for i in range(L):
        self.state, _ = c_comp(self.state, per_step[i], keys[i])
      self.state, m = g_comp(self.state, self.teacher, per_step[L], keys[L])
      return m

    return run_round, info

  def xla_round_flops(self, batch: int) -> Optional[float]:
    """XLA's count for L critic steps + 1 generator step, each compiled alone (no loops)."""
    a = self.args
    if a.n_steps > 1 and a.multistep == "dmd2":
      return None  # its chain is a scan: XLA would count one step of it
    per = jax.tree.map(lambda b: b[0], self.batches(batch))
    key = jax.random.key(0)
    c = jax.jit(self.critic_step).lower(self.state, per, key).compile()
    g = jax.jit(self.generator_step).lower(self.state, self.teacher, per, key).compile()
    fc, fg = common.xla_flops(c), common.xla_flops(g)
    if fc is None or fg is None:
      return None
    return a.critic_steps * fc + fg

  def run(self, batch: int, peak_tflops: float) -> dict:
    a = self.args
    res = {"batch": batch}
    run_round, info = self.compile(batch)
    xla_separate = info.pop("_xla_flops", None)
    res.update(info)
    if a.compile_only:
      return res
    t0 = time.perf_counter()
    for _ in range(a.warmup):
      jax.block_until_ready((run_round(), self.state))
    res["warmup_s"] = time.perf_counter() - t0
    times = []
    m = None
    for _ in range(a.steps):
      t0 = time.perf_counter()
      m = run_round()
      jax.block_until_ready((m, self.state))
      times.append(time.perf_counter() - t0)
    t = common.summary(times)
    res["round"] = t
    rt = t["median_s"]
    res["round_s"] = rt
    res["gen_images_per_s"] = batch / rt
    res["critic_images_per_s"] = a.critic_steps * batch / rt
    res["gen_loss"] = float(m["gen_loss"]) if m is not None else None
    res["finite"] = bool(m is not None and all(np.isfinite(float(v)) for v in m.values()))
    peak = common.peak_bytes()
    res["peak_bytes_source"] = "memory_stats" if peak is not None else "memory_analysis"
    if peak is None:
      ma = res["memory_analysis"]
      peak = (ma.get("estimated_peak_bytes") if a.fused else
              max(v.get("estimated_peak_bytes", 0) for v in ma.values()))
    res["peak_bytes"] = peak
    fl = self.flops(batch)
    res["model_flops_per_round"] = fl["model_flops_per_round"]
    res["hardware_flops_per_round"] = fl["hardware_flops_per_round"]
    res["achieved_tflops"] = fl["model_flops_per_round"] / rt / 1e12
    res["mfu"] = fl["model_flops_per_round"] / rt / (peak_tflops * 1e12)
    res["hfu"] = fl["hardware_flops_per_round"] / rt / (peak_tflops * 1e12)
    ds = common.datasheet_peak_tflops()
    if ds:
      res["mfu_datasheet"] = fl["model_flops_per_round"] / rt / (ds * 1e12)
    xla_cost = a.xla_cost == "on" or (a.xla_cost == "auto" and jax.default_backend() == "cpu")
    if xla_cost:
      xf = xla_separate if xla_separate is not None else self.xla_round_flops(batch)
      if xf:
        exact = self.flops(batch, exact_padding=True)
        res["xla_flops_per_round"] = xf
        res["xla_over_hardware_flops"] = xf / fl["hardware_flops_per_round"]
        res["xla_over_hardware_flops_exact_padding"] = xf / exact["hardware_flops_per_round"]
    return res


def markdown_header() -> str:
  return ("| preset | B | dtype | remat | attn | mode | lower+compile s | round s | gen img/s | "
          "critic img/s | peak GiB | TFLOP/s | MFU |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(args, r: dict) -> str:
  head = (f"| {args.preset} | {r['batch']} | {args.dtype} | {args.remat} | {args.attention} | "
          f"{'fused' if args.fused else 'separate'} |")
  hit = "" if "cache_hit" not in r else (" (cache hit)" if r["cache_hit"] else " (cache miss)")
  if "round_s" not in r:
    if "compile_s" in r:  # --compile_only
      return head + f" {r['lower_s']:.1f}+{r['compile_s']:.1f}{hit} | | | | | | |"
    return head + f" {r.get('status', '?')} | | | | | | |"
  return (head + f" {r['lower_s']:.1f}+{r['compile_s']:.1f}{hit} | {r['round_s']:.3f} | "
          f"{r['gen_images_per_s']:.2f} | {r['critic_images_per_s']:.2f} | "
          f"{common.gib(r['peak_bytes'])} | {r['achieved_tflops']:.3g} | {r['mfu']:.1%} |")


def main(argv: Optional[Sequence[str]] = None) -> dict:
  start = time.time()
  args = parse_args(argv)
  common.enable_cache(args.cache_dir)
  peak = args.peak_tflops
  peak_info = {"source": "--peak_tflops", "tflops": peak}
  if peak <= 0 and not args.compile_only:
    mp = common.measure_matmul_peak()
    peak, peak_info = mp["tflops"], {"source": "measured", **mp}
  bench = RoundBench(args)
  fl1 = bench.flops(1)
  out = {"args": vars(args), "device": common.device_info(), "peak": peak_info,
         "preset": args.preset, "image_size": bench.setup.image_size,
         "params_teacher": bench.n_params, "params_generator": bench.n_params_gen,
         "init_s": bench.init_s, "bytes_in_use_after_init": (common.memory_stats() or {}).get(
             "bytes_in_use"),
         "flops_per_gen_image": fl1, "results": []}
  sizes = [int(s) for s in args.sweep_batch.split(",") if s] or [args.batch]
  sizes = sorted(sizes)
  print(markdown_header(), flush=True)
  rows = [markdown_header()]
  last_cost, stop = 0.0, None
  for b in sizes:
    if stop:
      r = {"batch": b, "status": stop}
    elif args.time_budget_s and time.time() - start + last_cost > args.time_budget_s:
      r = {"batch": b, "status": "skipped_time_budget"}
    else:
      if not bench.state_alive():
        bench.state = bench.make_state()
      t0 = time.time()
      try:
        r = bench.run(b, peak)
        r["status"] = "ok"
      except Exception as e:  # noqa: BLE001 - record and go on
        if common.is_oom(e):
          r, stop = {"batch": b, "status": "oom", "error": str(e)[:2000]}, "skipped_after_oom"
        else:
          r = {"batch": b, "status": "error", "error": f"{type(e).__name__}: {str(e)[:2000]}"}
      # The next batch size compiles again and runs longer: budget 2x this one.
      last_cost = 2.0 * (time.time() - t0)
    out["results"].append(r)
    out["wall_s"] = time.time() - start
    common.write_json(args.out, out)
    rows.append(markdown_row(args, r))
    common.write_markdown(args.out, rows, title=f"IBMD round: {args.preset}, "
                          f"{out['device']['device_kind']}, L={args.critic_steps}")
    print(rows[-1], flush=True)
    if r.get("status") == "error":
      print(f"  error: {r['error'][:500]}", flush=True)
  return out


if __name__ == "__main__":
  main()
