"""Where a CPU UNet step spends its time: per-kernel times from a jax.profiler trace, and where the
compiled program's convolutions live (YNNPACK fusions or plain Eigen convolutions, loop bodies).

Needs XLA:CPU's per-kernel trace events: run with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true.

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true PYTHONPATH=. python bench/cpu_profile.py \\
      --net tiny --variant xla+scan > docs/results/cpu_profile_tiny_xla_scan.txt
"""
from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile
import time

import jax

from bench.cpu_unet import NETS, Bench


def conv_sites(hlo_text: str) -> collections.Counter:
  """(computation, output shape, dim_labels) of every convolution in a compiled HLO text."""
  comp, out = None, collections.Counter()
  for line in hlo_text.splitlines():
    m = re.match(r"^(ENTRY )?%?([\w.\-]+) ", line)
    if m and line.rstrip().endswith("{"):
      comp = re.sub(r"\.\d+$", "", m.group(2))
    if " convolution(" in line:
      shape = re.search(r"= (\S+) convolution\(", line)
      labels = re.search(r"dim_labels=[^,\s]+", line)
      out[(comp, shape.group(1).split("{")[0] if shape else "?",
           labels.group(0) if labels else "?")] += 1
  return out


def kernel_times(fn, top: int) -> tuple:
  """(wall seconds of one call, [(ms, count, event name)]) from a profiler trace of fn()."""
  jax.block_until_ready(fn())
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    data = jax.profiler.ProfileData.from_file(glob.glob(d + "/**/*.xplane.pb", recursive=True)[-1])
  ms, n = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue  # the intra-op threads, where the kernels run
      for ev in line.events:
        if ev.name.startswith("ThunkExecutor"):
          continue
        name = re.sub(r"\.\d+$", "", ev.name)
        ms[name] += ev.duration_ns / 1e6
        n[name] += 1
  return wall, [(v, n[k], k) for k, v in ms.most_common(top)]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--net", default="tiny", choices=sorted(NETS))
  p.add_argument("--variant", default="xla+scan", help="as bench/cpu_unet.py --variants")
  p.add_argument("--top", type=int, default=12)
  args = p.parse_args()
  b = Bench(args.net, args.variant, 0, 0, 0)
  for what, fn, compiled in (("teacher step", b.teacher_step, b.tstep),
                             ("IBMD round", b.ibmd_round, b.round)):
    wall, rows = kernel_times(fn, args.top)
    print(f"== {args.net} {args.variant} {what}: {wall:.3f} s wall (kernel time summed over "
          "both intra-op threads, by kernel kind)")
    for v, c, k in rows:
      print(f"  {v:9.1f} ms  {c:5d} calls  {k}")
    print("  convolutions in the compiled program (computation, output, dim_labels):")
    for (comp, shape, labels), c in sorted(conv_sites(compiled.as_text()).items()):
      print(f"    {c:4d}  {comp[:40]:40s} {shape:22s} {labels}")


if __name__ == "__main__":
  main()
