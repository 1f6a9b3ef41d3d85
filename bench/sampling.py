"""Teacher sampling at NFE 1..1000 against the IBMD student at 1, 2 and 4 steps, end to end.

Both run the library's real samplers: the teacher ibmd_jax.samplers.make_sampler (one lax.scan over
the NFE grid, x̂0 prediction + bridge posterior step per NFE), the student IBMD.generate (N generator
calls alternating with posterior samples). A timed call is end to end: the condition xT goes from a
host numpy array to the device, the sampler runs with all its bridge arithmetic, and the images come
back to host memory. The device-only time (xT already on the device, block_until_ready on the
output) is reported beside it. Networks have random weights (speed does not depend on them).

  # CPU smoke
  PYTHONPATH=. python bench/sampling.py --preset micro --batch 2 --teacher_nfe 1,2,4 \\
      --student_steps 1,2 --dtype f32 --out /tmp/sampling.json
  # GPU
  PYTHONPATH=. python bench/sampling.py --preset i2sb_imagenet256 --batch 4 \\
      --teacher_nfe 1,10,100,1000 --out /tmp/sampling_i2sb.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional, Sequence

import jax
import numpy as np

from bench import common
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax.samplers import make_sampler


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="micro", choices=sorted(common.SETUPS))
  p.add_argument("--image_size", type=int, default=0, help="0: the preset's")
  p.add_argument("--batch", type=int, default=4, help="images per sampler call")
  p.add_argument("--dtype", default="bf16", choices=sorted(common.DTYPES))
  p.add_argument("--attention", default="xla", help="xla | cudnn | default")
  p.add_argument("--teacher_nfe", default="", help="comma-separated NFEs (default "
                 "1,2,5,10,20,50,100,200,500,1000 on GPU, 1,2,4,8 on CPU)")
  p.add_argument("--student_steps", default="1,2,4", help="comma-separated generator steps")
  p.add_argument("--z_channels", type=int, default=3)
  p.add_argument("--repeats", type=int, default=5, help="timed calls per point (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  p.add_argument("--max_point_s", type=float, default=60.0,
                 help="fewer timed calls (at least 1 of each kind) when the end-to-end and "
                 "device-only repeats together would take longer than this")
  p.add_argument("--reference_nfe", type=int, default=1000,
                 help="speed-ups are against the teacher at this NFE (extrapolated linearly in "
                 "NFE from the measured points when not measured)")
  p.add_argument("--cache_dir", default="", help="persistent compilation cache directory")
  p.add_argument("--time_budget_s", type=float, default=0.0,
                 help="skip teacher NFEs whose predicted cost would pass this (0: none)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="JSON path (a .md table is written beside it)")
  args = p.parse_args(argv)
  gpu = jax.default_backend() != "cpu"
  nfe = args.teacher_nfe or ("1,2,5,10,20,50,100,200,500,1000" if gpu else "1,2,4,8")
  args.teacher_nfe_list = sorted({_positive(s, "--teacher_nfe") for s in nfe.split(",") if s})
  args.student_steps_list = sorted({_positive(s, "--student_steps")
                                    for s in args.student_steps.split(",") if s})
  if args.batch < 1:
    raise SystemExit(f"--batch must be >= 1, got {args.batch}")
  return args


def _positive(s: str, flag: str) -> int:
  try:
    v = int(s)
  except ValueError:
    raise SystemExit(f"{flag}: {s!r} is not an integer") from None
  if v < 1:
    raise SystemExit(f"{flag}: values must be >= 1, got {v}")
  return v


def time_point(compiled, params, host_inputs: list, key, label, args) -> dict:
  """Warm-up, then the median of timed end-to-end calls (host xT in, host images out), and the
  device-only median (inputs already on the device). Rotates over the host inputs."""
  dev_inputs = [jax.device_put(x) for x in host_inputs]
  t0 = time.perf_counter()
  for i in range(max(args.warmup, 1)):
    out = compiled(params, dev_inputs[i % len(dev_inputs)], key, label)
    jax.block_until_ready(out)
  warm = (time.perf_counter() - t0) / max(args.warmup, 1)
  repeats = args.repeats  # each of the two timings below
  if 2 * warm * repeats > args.max_point_s:
    repeats = max(1, int(args.max_point_s / (2 * max(warm, 1e-9))))
  e2e, dev = [], []
  out = None
  for i in range(repeats):
    x = host_inputs[i % len(host_inputs)]
    t0 = time.perf_counter()
    out = np.asarray(compiled(params, jax.device_put(x), key, label))
    e2e.append(time.perf_counter() - t0)
  for i in range(repeats):
    x = dev_inputs[i % len(dev_inputs)]
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x, key, label))
    dev.append(time.perf_counter() - t0)
  b = host_inputs[0].shape[0]
  med = statistics.median(e2e)
  return {"warmup_call_s": warm, "repeats": repeats, "end_to_end": common.summary(e2e),
          "device_only": common.summary(dev), "s_per_call": med, "ms_per_image": 1e3 * med / b,
          "images_per_s": b / med, "device_s_per_call": statistics.median(dev),
          "finite": bool(out is not None and np.isfinite(out).all()),
          "out_shape": list(out.shape) if out is not None else None}


def linear_fit(points: dict) -> Optional[tuple]:
  """(intercept, slope) of s_per_call against NFE by least squares; None under two points."""
  if len(points) < 2:
    return None
  x = np.array(sorted(points), float)
  y = np.array([points[int(n)] for n in x], float)
  slope, intercept = np.polyfit(x, y, 1)
  return float(intercept), float(slope)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  start = time.time()
  args = parse_args(argv)
  common.enable_cache(args.cache_dir)
  setup = common.Setup(args.preset, args.dtype, "none", args.attention, args.image_size or None)
  key = jax.random.key(args.seed)
  teacher = setup.random_params(jax.random.fold_in(key, 0))
  gen = setup.random_params(jax.random.fold_in(key, 1), args.z_channels)
  rng = np.random.default_rng(args.seed)
  host = [rng.standard_normal(setup.shape(args.batch)).astype(np.float32) for _ in range(2)]
  label = setup.label(args.batch)
  out = {"args": {k: v for k, v in vars(args).items()}, "device": common.device_info(),
         "preset": args.preset, "image_size": setup.image_size, "batch": args.batch,
         "params_teacher": common.param_count(teacher), "teacher": {}, "student": {}}

  measured = {}
  for nfe in args.teacher_nfe_list:
    fit = linear_fit(measured)
    if args.time_budget_s and fit is not None:
      predicted = (fit[0] + fit[1] * nfe) * (args.warmup + 2 * args.repeats)
      if time.time() - start + predicted > args.time_budget_s:
        out["teacher"][str(nfe)] = {"status": "skipped_time_budget"}
        continue
    sampler = make_sampler(setup.net, setup.bridge, nfe)
    compiled, info = common.timed_compile(sampler, teacher, jax.device_put(host[0]), key, label,
                                          cache_dir=args.cache_dir)
    r = {"nfe": nfe, **info, **time_point(compiled, teacher, host, key, label, args)}
    r["status"] = "ok"
    out["teacher"][str(nfe)] = r
    measured[nfe] = r["s_per_call"]
    common.write_json(args.out, out)
    print(f"teacher NFE {nfe}: {r['s_per_call']:.4g} s/call end to end "
          f"({r['device_s_per_call']:.4g} s on device), compile {r['compile_s']:.1f} s", flush=True)

  ibmd = ibmd_lib.IBMD(bridge=setup.bridge, teacher=setup.net, critic=setup.net,
                       generator=setup.net, z_channels=args.z_channels,
                       n_steps=max(args.student_steps_list))
  for steps in args.student_steps_list:
    def generate(p, xT, k, lab, s=steps):
      return ibmd.generate(p, xT, k, label=lab, n_steps=s)

    compiled, info = common.timed_compile(jax.jit(generate), gen, jax.device_put(host[0]), key,
                                          label, cache_dir=args.cache_dir)
    r = {"steps": steps, **info, **time_point(compiled, gen, host, key, label, args)}
    r["status"] = "ok"
    out["student"][str(steps)] = r
    common.write_json(args.out, out)
    print(f"student {steps} step(s): {r['s_per_call']:.4g} s/call end to end", flush=True)

  # Speed-ups against the teacher at the reference NFE (measured, or the linear fit).
  ref = args.reference_nfe
  fit = linear_fit(measured)
  if ref in measured:
    ref_s, ref_src = measured[ref], "measured"
  elif fit is not None and fit[1] > 0:
    ref_s, ref_src = fit[0] + fit[1] * ref, "extrapolated"
  elif fit is not None:  # timing noise larger than the NFE's cost: no line to extend
    ref_s, ref_src = None, f"unavailable (the fit's slope {fit[1]:.3g} s per NFE is not positive)"
  else:
    ref_s, ref_src = None, "unavailable"
  out["teacher_fit"] = None if fit is None else {"intercept_s": fit[0], "s_per_nfe": fit[1]}
  out["reference"] = {"nfe": ref, "s_per_call": ref_s, "source": ref_src}
  for r in out["student"].values():
    r["speedup_vs_teacher_ref"] = None if ref_s is None else ref_s / r["s_per_call"]
  if 1 in measured:
    out["teacher_forward_images_per_s"] = args.batch / measured[1]

  rows = ["| sampler | NFE | compile s | s / call (end to end) | s / call (device) | ms / image | "
          "images/s | speed-up vs teacher @ ref |", "|---|---|---|---|---|---|---|---|"]
  for nfe, r in out["teacher"].items():
    if r.get("status") != "ok":
      rows.append(f"| teacher | {nfe} | {r.get('status')} | | | | | |")
      continue
    sp = "" if ref_s is None else f"{ref_s / r['s_per_call']:.3g}"
    rows.append(f"| teacher | {nfe} | {r['compile_s']:.1f} | {r['s_per_call']:.4g} | "
                f"{r['device_s_per_call']:.4g} | {r['ms_per_image']:.4g} | "
                f"{r['images_per_s']:.4g} | {sp} |")
  for steps, r in out["student"].items():
    sp = "" if r["speedup_vs_teacher_ref"] is None else f"{r['speedup_vs_teacher_ref']:.4g}"
    rows.append(f"| IBMD student | {steps} | {r['compile_s']:.1f} | {r['s_per_call']:.4g} | "
                f"{r['device_s_per_call']:.4g} | {r['ms_per_image']:.4g} | "
                f"{r['images_per_s']:.4g} | {sp} |")
  ref_txt = (f"reference: teacher at NFE {ref}, {ref_src}"
             + ("" if ref_s is None else f" ({ref_s:.4g} s per call of {args.batch})"))
  rows += ["", ref_txt]
  out["wall_s"] = time.time() - start
  common.write_json(args.out, out)
  common.write_markdown(args.out, rows, title=f"Sampling: {args.preset}, batch {args.batch}, "
                        f"{out['device']['device_kind']}")
  print("\n".join(rows), flush=True)
  return out


if __name__ == "__main__":
  main()
