"""The device's two ceilings: dense matmul rate (bf16 on GPU) and device-memory bandwidth.

MFU in bench/ibmd_round.py divides by the measured matmul rate, so the denominator is what this
device and this XLA reach on a plain large product, not a datasheet number.

  PYTHONPATH=. python bench/matmul_peak.py --sizes 4096,8192 --out /tmp/matmul_peak.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from bench import common


def measure_copy_bandwidth(n_bytes: Optional[int] = None, repeats: int = 5) -> dict:
  """x + 1 over a large float32 array: bytes read plus bytes written per second."""
  gpu = jax.default_backend() != "cpu"
  n_bytes = int(n_bytes or (2**31 if gpu else 2**26))
  x = jax.random.normal(jax.random.key(1), (n_bytes // 4,), jnp.float32)
  f = jax.jit(lambda x: x + 1.0)
  jax.block_until_ready(f(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"bytes_moved": 2 * n_bytes, "GBps": 2 * n_bytes / med / 1e9, **common.summary(times)}


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="", help="comma-separated n (default 4096,8192 on GPU, 512 "
                 "on CPU)")
  p.add_argument("--dtype", default="", choices=["", "bf16", "f32"])
  p.add_argument("--chain", type=int, default=10, help="dependent products per timed run")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no_copy", action="store_true", help="skip the bandwidth measurement")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  gpu = jax.default_backend() != "cpu"
  sizes = [int(s) for s in args.sizes.split(",") if s] or ([4096, 8192] if gpu else [512])
  runs = [common.measure_matmul_peak(n, args.dtype or None, args.chain, args.repeats)
          for n in sizes]
  best = max(runs, key=lambda r: r["tflops"])
  res = {"device": common.device_info(), "matmul": runs, "peak_tflops": best["tflops"],
         "peak_dtype": best["dtype"], "datasheet_bf16_tflops": common.datasheet_peak_tflops()}
  if not args.no_copy:
    res["copy"] = measure_copy_bandwidth(repeats=args.repeats)
  common.write_json(args.out, res)
  rows = ["| n | dtype | TFLOP/s (median) | best |", "|---|---|---|---|"]
  rows += [f"| {r['n']} | {r['dtype']} | {r['tflops']:.4g} | {r['best_tflops']:.4g} |"
           for r in runs]
  if "copy" in res:
    rows += ["", f"copy bandwidth: {res['copy']['GBps']:.4g} GB/s (read + write)"]
  common.write_markdown(args.out, rows, title=f"Ceilings: {res['device']['device_kind']}")
  print("\n".join(rows), flush=True)
  return res


if __name__ == "__main__":
  main()
