"""What XLA says about a compiled program, read off its text: the bytes its collectives move per
chip and its size (compiled HLO), its cost analysis, where its compile time went (an XLA dump's
pass metadata), and the HBM an out-of-memory compile error asked for."""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

# Bytes per element of HLO's array types, for the collectives' sizes read off the compiled HLO.
HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
             "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVE_OPS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVE_OPS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict:
  """{collective op: bytes of its results on one chip} in a compiled (partitioned) HLO module.
  An async '-start' op's tuple holds its operand and result: the larger counts; a synchronous
  op's tuple (combined collectives) counts whole. A loop body counts once, as in XLA's FLOPs."""
  out: dict = {}
  for m in _COLLECTIVE.finditer(hlo_text):
    shape, op, start = m.groups()
    sizes = []
    for dt, dims in _ARRAY.findall(shape):
      if dt in HLO_BYTES:
        sizes.append(int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
                     * HLO_BYTES[dt])
    if sizes:
      out[op] = out.get(op, 0) + (max(sizes) if start else sum(sizes))
  return out


def hlo_instructions(hlo_text: str) -> int:
  """Instructions of a compiled HLO module's text (the program's size)."""
  return len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", hlo_text, re.M))


def xla_cost(compiled) -> dict:
  """XLA's cost analysis of a compiled program as one dict (older JAX: a list, one per module)."""
  cost = compiled.cost_analysis() or {}
  return (cost[0] if cost else {}) if isinstance(cost, list) else cost


_PASS = re.compile(r'pass_metadata \{(.*?)\n\}', re.S)


def _field(block: str, name: str) -> str:
  m = re.search(rf'\b{name}: "?([^"\n]*)"?', block)
  return m.group(1) if m else ""


def pass_times(dump_dir: str, compile_s: Optional[float] = None, top: int = 12) -> dict:
  """Where XLA's compile time went, from a dump made with the compiler options
  ``xla_dump_to=dump_dir, xla_dump_module_metadata=True``: each HLO pass's own seconds (nested
  pipelines' passes taken out of their parents), summed over its runs, the slowest ``top``; the
  seconds covered by HLO passes; and, given the compile's wall time, the rest (the TPU backend's
  code generation, which the metadata does not time)."""
  spans = []
  for root, _, files in os.walk(dump_dir):
    for f in files:
      if f.endswith(".metadata.textproto"):
        with open(os.path.join(root, f)) as fh:
          for block in _PASS.findall(fh.read()):
            spans.append((int(_field(block, "start_timestamp_usec") or 0),
                          int(_field(block, "end_timestamp_usec") or 0),
                          _field(block, "pass_name"), _field(block, "pipeline_name")))
  spans.sort(key=lambda s: (s[0], -s[1]))
  own, stack = {}, []  # stack of [end, key, own_us]

  def close(until):
    while stack and stack[-1][0] <= until:
      end, key, us = stack.pop()
      own[key] = own.get(key, 0) + us

  covered, last_end = 0, 0
  for a, b, name, pipe in spans:
    close(a)
    if stack:
      stack[-1][2] -= b - a  # a nested pass: not its parent's own time
    stack.append([b, f"{pipe}/{name}", b - a])
    covered += max(0, b - max(a, last_end))
    last_end = max(last_end, b)
  close(float("inf"))
  slow = sorted(own.items(), key=lambda kv: -kv[1])[:top]
  out = {"hlo_passes_s": covered / 1e6, "passes": len(spans),
         "slowest": {k: round(v / 1e6, 2) for k, v in slow}}
  # The phases from the dump files' times: HLO optimisation (before_optimizations ->
  # after_optimizations_before_buffer_assignment), buffer assignment, backend code generation
  # (-> after_codegen).
  stamps = {}
  for root, _, files in os.walk(dump_dir):
    for f in files:
      for tag in ("before_optimizations.txt", "after_optimizations_before_buffer_assignment.txt",
                  "after_optimizations_after_buffer_assignment.txt", "after_codegen.txt"):
        if f.endswith(tag):
          stamps[tag] = max(stamps.get(tag, 0.0), os.path.getmtime(os.path.join(root, f)))
  order = ["before_optimizations.txt", "after_optimizations_before_buffer_assignment.txt",
           "after_optimizations_after_buffer_assignment.txt", "after_codegen.txt"]
  if all(t in stamps for t in order):
    out["phases_s"] = {"hlo_optimisation": stamps[order[1]] - stamps[order[0]],
                       "buffer_assignment": stamps[order[2]] - stamps[order[1]],
                       "backend_codegen": stamps[order[3]] - stamps[order[2]]}
  if compile_s is not None:
    out["rest_s"] = compile_s - covered / 1e6
  return out


def xla_oom(message: str) -> Optional[tuple[float, float]]:
  """(GiB required, GiB available) from XLA's out-of-memory compile error, or None."""
  m = re.search(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", message)
  if m is None:
    return None if "Ran out of memory" not in message else (float("nan"), float("nan"))
  return float(m.group(1)), float(m.group(2))
