"""The sharded IBMD round on several devices (8 fake CPU devices by default): runs and agrees.

Correctness, not speed: one fused round (ibmd_jax.ibmd.make_steps) is compiled with the
library's explicit shardings and donation (ibmd_jax.sharding.jit_round) on a (data, fsdp) mesh,
run from the same state, teacher, batches and key as the same round jitted on one device, and
the two results (metrics, generator and critic parameters after the update) are compared.

  PYTHONPATH=. python bench/sharded_round.py --preset micro --batch 8 --mesh 4x2 \\
      --out /tmp/sharded.json
On a machine with a GPU, --platform cpu (the default) still runs on 8 CPU devices: JAX_PLATFORMS
and XLA_FLAGS are set before JAX starts, unless JAX was already imported (tests).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "jax" not in sys.modules:
  # Before JAX starts: ask for the fake CPU devices (--devices, default 8).
  _n = 8
  for _i, _a in enumerate(sys.argv):
    if _a.startswith("--devices="):
      _n = int(_a.split("=", 1)[1])
    elif _a == "--devices" and _i + 1 < len(sys.argv):
      _n = int(sys.argv[_i + 1])
  if "--platform=default" not in sys.argv and not (
      "--platform" in sys.argv and sys.argv[sys.argv.index("--platform") + 1:][:1] == ["default"]):
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={_n}".strip()

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench.ibmd_round import RoundBench  # noqa: E402
from bench.ibmd_round import parse_args as round_args  # noqa: E402
from ibmd_jax import sharding as shd  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="micro", choices=sorted(common.SETUPS))
  p.add_argument("--image_size", type=int, default=0, help="0: the preset's (a full-size preset "
                 "at a small image size keeps its parameters and program, with less arithmetic)")
  p.add_argument("--batch", type=int, default=8, help="global batch (divisible by the devices)")
  p.add_argument("--mesh", default="4x2", help="DATAxFSDP, e.g. 8x1, 4x2, 1x8")
  p.add_argument("--devices", type=int, default=8, help="fake CPU devices to ask for")
  p.add_argument("--platform", default="cpu", choices=["cpu", "default"],
                 help="cpu: fake CPU devices even where a GPU is present")
  p.add_argument("--dtype", default="f32", choices=sorted(common.DTYPES))
  p.add_argument("--remat", default="none")
  p.add_argument("--critic_steps", type=int, default=2)
  p.add_argument("--z_channels", type=int, default=3)
  p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"],
                 help="sgd (default): the parameter update is lr × gradient, so comparing updates "
                 "compares gradients. Adam's first step is lr × g / (|g| + eps) ≈ ±lr whatever g, "
                 "so rounding-level gradients (a conv bias before a GroupNorm has gradient 0 up to "
                 "rounding) give O(1) relative differences that mean nothing")
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--rtol", type=float, default=1e-4,
                 help="largest relative difference of metrics and parameters accepted")
  p.add_argument("--update_rtol", type=float, default=1e-3,
                 help="largest relative difference ‖Δa − Δb‖ / ‖Δb‖ of the parameter updates "
                 "(all leaves together) accepted")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  try:
    data, fsdp = (int(x) for x in args.mesh.lower().split("x"))
  except ValueError:
    raise SystemExit(f"--mesh must look like 4x2 (data x fsdp), got {args.mesh!r}") from None
  args.mesh_shape = (data, fsdp)
  return args


def flat(tree) -> np.ndarray:
  """All leaves of a tree as one float64 vector (global norms over the whole network)."""
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv: Optional[Sequence[str]] = None) -> dict:
  from ibmd_jax.sharding import jit_round  # the launcher's own jit of the round

  start = time.time()
  args = parse_args(argv)
  data, fsdp = args.mesh_shape
  n = data * fsdp
  if jax.device_count() < n:
    raise SystemExit(f"--mesh {args.mesh} needs {n} devices, JAX sees {jax.device_count()}; run "
                     "this script directly (it asks for --devices fake CPU devices) or set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts")
  mesh = shd.make_mesh(data, fsdp, jax.devices()[:n])
  shd.check_batch(mesh, args.batch, "--batch")
  rargs = round_args(["--preset", args.preset, "--batch", str(args.batch), "--dtype", args.dtype,
                      "--remat", args.remat, "--critic_steps", str(args.critic_steps),
                      "--z_channels", str(args.z_channels), "--seed", str(args.seed),
                      "--optimizer", args.optimizer, "--lr", str(args.lr),
                      "--image_size", str(args.image_size)])
  bench = RoundBench(rargs)
  batches = bench.batches(args.batch)
  key = jax.random.key(args.seed + 3)

  # One device (no donation: the state is used again below).
  t0 = time.perf_counter()
  ref_state, ref_m = jax.jit(bench.round_step)(bench.state, bench.teacher, batches, key)
  jax.block_until_ready((ref_state, ref_m))
  single_s = time.perf_counter() - t0

  # Sharded: the library's shardings and donation.
  state_sh = shd.state_shardings(mesh, bench.state)
  teacher_sh = shd.state_shardings(mesh, bench.teacher)
  fn = jit_round(bench.round_step, mesh, state_sh, teacher_sh)
  state = jax.device_put(jax.tree.map(np.asarray, bench.state), state_sh)
  teacher = jax.device_put(jax.tree.map(np.asarray, bench.teacher), teacher_sh)
  sbatches = {k: jax.device_put(np.asarray(v), shd.batch_sharding(mesh, 1))
              for k, v in batches.items()}
  t0 = time.perf_counter()
  out_state, m = fn(state, teacher, sbatches, key)
  jax.block_until_ready((out_state, m))
  sharded_s = time.perf_counter() - t0

  sharded_leaves = sum(1 for x in jax.tree.leaves(out_state.gen)
                       if len(x.sharding.device_set) == n and not x.sharding.is_fully_replicated)
  errs = {"metrics": {k: rel_err(m[k], ref_m[k]) for k in ref_m}}
  for part in ("gen", "critic"):
    new = flat(getattr(out_state, part))
    ref = flat(getattr(ref_state, part))
    old = flat(getattr(bench.state, part))
    errs[part] = rel_err(new, ref)
    errs[part + "_update"] = rel_err(new - old, ref - old)
  worst = max(max(errs["metrics"].values()), errs["gen"], errs["critic"])
  worst_update = max(errs["gen_update"], errs["critic_update"])
  finite = all(np.isfinite(float(v)) for v in m.values())
  res = {"args": {k: v for k, v in vars(args).items()}, "device": common.device_info(),
         "mesh": {"data": data, "fsdp": fsdp}, "params_teacher": bench.n_params,
         "metrics_sharded": {k: float(v) for k, v in m.items()},
         "metrics_single": {k: float(v) for k, v in ref_m.items()}, "rel_err": errs,
         "max_rel_err": worst, "gen_leaves_sharded_over_mesh": sharded_leaves,
         "single_device_first_call_s": single_s, "sharded_first_call_s": sharded_s,
         "max_rel_err_update": worst_update, "finite": finite,
         "agree": bool(finite and worst <= args.rtol and worst_update <= args.update_rtol)}
  res["wall_s"] = time.time() - start
  common.write_json(args.out, res)
  rows = ["| preset | params | mesh | B | max rel. err (metrics, params) | max rel. err of the "
          "updates | FSDP-split generator leaves | agree |", "|---|---|---|---|---|---|---|---|",
          f"| {args.preset} | {bench.n_params / 1e6:.1f} M | {data}x{fsdp} | {args.batch} | "
          f"{worst:.2e} | {worst_update:.2e} | {sharded_leaves} | {res['agree']} |"]
  common.write_markdown(args.out, rows, title=f"Sharded round on {n} {jax.default_backend()} "
                        "devices")
  print("\n".join(rows), flush=True)
  if not res["agree"]:
    print(f"sharded and single-device rounds differ: {errs}", flush=True)
  return res


if __name__ == "__main__":
  r = main()
  sys.exit(0 if r["agree"] else 1)
