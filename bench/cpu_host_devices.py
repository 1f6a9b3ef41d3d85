"""The CPU's one knob outside the model: the batch split over several XLA host devices.

XLA:CPU runs one program on one device with a thread pool for the large kernels, but much of a
UNet step (small convolutions, normalisations, elementwise fusions) runs on one thread: the 32²
benchmark UNet's teacher step keeps 1.4 of 2 cores busy. With `--xla_force_host_platform_device_count=N`
and the batch sharded over the N devices (the library's `mesh.data=N`), each device runs its
share on its own thread. This script measures the library's teacher step and fused IBMD round of a
bench/cpu_unet.py network with the batch split over 1, 2, ... host devices (one child process per
count, since the device count is fixed when JAX starts): seconds per call (min of --repeats),
CPU-seconds per wall-second while it runs, compile seconds.

  PYTHONPATH=. python bench/cpu_host_devices.py --net cpu32 --devices 1,2 \\
      --out docs/results/cpu_host_devices.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Optional, Sequence


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def measure(net: str, variant: str, repeats: int) -> dict:
  """In this process: teacher step and round, batch sharded over all local devices."""
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from bench.cpu_unet import Bench

  b = Bench(net, variant, 0, 0, 0, compile=False)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rep = NamedSharding(mesh, P())
  programs = {
      # teacher batch (B, H, W, C) split on B; round batch (L + 1, B, H, W, C) split on B
      "teacher_step": (b.teacher_step_fn, (b.tstate, b.tbatch, b.key),
                       (rep, NamedSharding(mesh, P("data")), rep)),
      "ibmd_round": (b.round_fn, (b.istate, b.teacher, b.rbatch, b.key),
                     (rep, rep, NamedSharding(mesh, P(None, "data")), rep)),
  }
  out = {"devices": len(jax.devices()), "net": net, "variant": variant,
         "teacher_batch": b.tb, "round_batch": b.rb, "critic_steps": b.L}
  for name, (fn, args, shardings) in programs.items():
    args = jax.device_put(args, shardings)
    t0 = time.perf_counter()
    f = jax.jit(fn, in_shardings=shardings).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(f(*args))
    times, cpus = [], []
    for _ in range(repeats):
      c0, t0 = _cpu(), time.perf_counter()
      jax.block_until_ready(f(*args))
      times.append(time.perf_counter() - t0)
      cpus.append(_cpu() - c0)
    i = times.index(min(times))
    out[name] = {"s_min": min(times), "s_all": times, "cores_busy": cpus[i] / times[i],
                 "compile_s": compile_s}
  return out


def main(argv: Optional[Sequence[str]] = None) -> list:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--net", default="cpu32", help="a bench/cpu_unet.py network")
  p.add_argument("--variant", default="xla+unroll", help="as bench/cpu_unet.py --variants")
  p.add_argument("--devices", default="1,2", help="host device counts, one child process each")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.child:
    print(json.dumps(measure(a.net, a.variant, a.repeats)))
    return []
  rows = []
  for n in [int(d) for d in a.devices.split(",")]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, __file__, "--child", "--net", a.net, "--variant",
                        a.variant, "--repeats", str(a.repeats)], env=env, capture_output=True,
                       text=True, check=False)
    if r.returncode:
      raise SystemExit(f"{n} devices: child failed:\n{r.stderr[-3000:]}")
    rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
  print("| host devices | teacher step (B = %d) s | cores busy | IBMD round (B = %d, L = %d) s | "
        "cores busy |" % (rows[0]["teacher_batch"], rows[0]["round_batch"], rows[0]["critic_steps"]))
  print("|---|---|---|---|---|")
  for r in rows:
    t, g = r["teacher_step"], r["ibmd_round"]
    print(f"| {r['devices']} | {t['s_min']:.3f} | {t['cores_busy']:.2f} | {g['s_min']:.3f} | "
          f"{g['cores_busy']:.2f} |")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
