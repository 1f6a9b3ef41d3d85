"""Roofline estimates per program and per round, every loop counted as many times as it runs.

A compiled program's roofline time on one chip is the largest of FLOPs ÷ bf16 peak, HBM bytes ÷
HBM bandwidth and collective bytes ÷ inter-chip bandwidth (one direction: what a chip receives at
once; tools/chips.py) — perfect overlap assumed, latency and link topology not modelled. XLA's
counts hold each loop body once (tools/loops.py), so:

- per program: the roofline of what XLA counted, × the program's loop factor (its body's runs);
- per round: a fused round's program × ``round_factor``; a split round's two programs each × its own
  factor (L critic steps for the critic program), their times added (they run one after the other).

``images_per_s_per_chip`` is the generator images of one round ÷ chips ÷ the round's time.
"""
from __future__ import annotations

from typing import Optional, Sequence


def roofline(flops: float, bytes_accessed: float, collective: float, chip: dict) -> dict:
  """{compute, memory, interconnect} seconds and the bound of one program as counted."""
  times = {"compute": flops / (chip["bf16_tflops"] * 1e12),
           "memory": bytes_accessed / (chip["hbm_gbps"] * 1e9)}
  ici = chip.get("ici_gbps_one_way")
  if ici:  # None where no published figure exists (v4): the term is left out, and said so
    times["interconnect"] = collective / (ici * 1e9)
  bound = max(times, key=times.get)
  return {"s": times[bound], "bound": bound, **{f"{k}_s": v for k, v in times.items()}}


def program_estimate(costs: dict, chip: dict, chips: int, images: int, factor: float = 1.0,
                     parts: Optional[Sequence[dict]] = None,
                     part_factors: Optional[Sequence[float]] = None) -> dict:
  """The estimate of one call of a program.

  costs: XLA's {flops, bytes_accessed, collective} of the program (a split round: both programs'
  sums); factor: what one call runs ÷ what XLA counted (tools/loops.py). A split round with
  `parts` (each program's own costs, critic then generator) and `part_factors` is estimated per
  program and added; without parts, `factor` scales the sums."""
  if parts and part_factors:
    per = [roofline(p["flops"] * f, p["bytes_accessed"] * f, p["collective"] * f, chip)
           for p, f in zip(parts, part_factors)]
    t = sum(p["s"] for p in per)
    flops = sum(p["flops"] * f for p, f in zip(parts, part_factors))
    bound = "+".join(p["bound"] for p in per)
    counted = roofline(costs["flops"], costs["bytes_accessed"], costs["collective"], chip)
    per_program = per
  else:
    counted = roofline(costs["flops"], costs["bytes_accessed"], costs["collective"], chip)
    whole = roofline(costs["flops"] * factor, costs["bytes_accessed"] * factor,
                     costs["collective"] * factor, chip)
    t, bound, flops, per_program = whole["s"], whole["bound"], costs["flops"] * factor, [whole]
  return {"roofline_s": t, "bound": bound, "flops_run": flops, "loop_factor": factor,
          "counted_roofline_s": counted["s"], "counted_bound": counted["bound"],
          "per_program": per_program,
          "interconnect_s": sum(p.get("interconnect_s", 0.0) for p in per_program),
          "images_per_s_per_chip": (images / chips / t) if t > 0 else None}
