"""The roofline model: a compiled program's step time per chip from its FLOPs, HBM bytes and
collective bytes against a chip's datasheet peaks (tools.chips.CHIPS)."""
from __future__ import annotations


def estimate(c, chip: dict, chips: int) -> dict:
  """Roofline step time per chip (the largest of FLOPs ÷ peak, HBM bytes ÷ bandwidth and
  collective bytes ÷ inter-chip bandwidth: perfect overlap assumed) and images per second per
  chip. Estimates: XLA counts a loop body once, and links, latency and overlap are not modelled."""
  times = {"compute": c.flops / (chip["bf16_tflops"] * 1e12),
           "memory": c.bytes_accessed / (chip["hbm_gbps"] * 1e9),
           "interconnect": c.collective / (chip["ici_gbit"] / 8 * 1e9)}
  bound = max(times, key=times.get)
  t = times[bound]
  return {"roofline_s": t, "bound": bound, "interconnect_s": times["interconnect"],
          "images_per_s_per_chip": (c.images / chips / t) if t > 0 else None}
