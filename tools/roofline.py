"""The roofline model: a compiled program's step time per chip from its FLOPs, HBM bytes and
collective bytes against a chip's datasheet peaks (tools/chips.py), each loop counted as many times
as it runs (tools/loops.py, tools/estimates.py)."""
from __future__ import annotations

from tools import estimates


def estimate(c, chip: dict, chips: int, factor: float = 1.0, part_factors=None) -> dict:
  """Roofline time of one call of a compiled program per chip and images per second per chip.

  c: a Compiled (its XLA counts: FLOPs, bytes accessed, collective bytes; a split round's
  per-program counts in c.parts_cost); factor: what one call runs ÷ what XLA counted (XLA counts a
  loop body once); part_factors: a split round's (critic, generator) factors, used with
  c.parts_cost. Perfect overlap assumed; latency and link topology not modelled."""
  costs = {"flops": c.flops, "bytes_accessed": c.bytes_accessed, "collective": c.collective}
  parts = list(getattr(c, "parts_cost", ()) or ())
  use_parts = bool(parts) and part_factors is not None and len(parts) == len(part_factors)
  e = estimates.program_estimate(costs, chip, chips, c.images, factor,
                                 parts if use_parts else None,
                                 part_factors if use_parts else None)
  if use_parts:  # the round's overall factor, for the report
    e["loop_factor"] = e["flops_run"] / c.flops if c.flops else 1.0
  e.pop("per_program", None)
  return e
