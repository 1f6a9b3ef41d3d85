r"""Where a TPU program's compile time goes: the launcher's program (compile mode's builder) compiled
for a TPU slice by libtpu's compile-only client under config variants, with trace+lower and XLA
compile timed apart and the program's size (StableHLO lines, optimised HLO instructions).

  ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=. python bench/compile_time.py \
      --config=configs/bench64.py:inpaint,tiny --topology=v5e:2x2 --program=round \
      --variant=base: --variant=xla_conv_grad:model.conv_grad=xla \
      --variant=critic5:distill.critic_steps=5 --out=/tmp/compile_time.json

A variant is NAME:key=value[,key=value...] (config overrides, values parsed as Python literals or
kept as strings); a key starting with ``xla.`` is an XLA compiler option instead (the rest of the
key, e.g. ``xla.exec_time_optimization_effort=-1`` or ``xla.optimization_level=O1``), passed to
``Lowered.compile(compiler_options=...)``. Needs libtpu (pip install -e ".[tpu]"). One variant at a
time, in order; the JSON is rewritten after each.

--passes=DIR dumps each variant's compile to DIR/NAME (XLA's module metadata) and adds where the
time went: the HLO passes (the slowest, summed over their runs, by aot.pass_times) and the rest
of the compile (the TPU backend's code generation after the last HLO pass).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import time

from ibmd_jax import checks

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def load(spec: str):
  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location("_cfg", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def apply(config, overrides: str, options: dict | None = None):
  """config with NAME:key=value,... overrides; an unknown key is an error naming it. ``xla.KEY``
  items go to ``options`` (XLA compiler options) instead."""
  flat = {}
  for item in filter(None, overrides.split(",")):
    key, _, raw = item.partition("=")
    if key.startswith("xla."):
      if options is None:
        raise SystemExit(f"--variant override {key!r}: XLA options are not taken here")
      try:
        options[key[4:]] = ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        options[key[4:]] = raw
      if key[4:] in ("optimization_level", "memory_fitting_level"):  # O0..O3 -> XLA's enum
        from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
        options[key[4:]] = jax_config.EffortLevel[str(raw)].value
      continue
    try:
      checks._get(config, key)  # pylint: disable=protected-access
    except (KeyError, AttributeError):
      raise SystemExit(f"--variant override {key!r}: no such config key") from None
    try:
      flat[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      flat[key] = raw
  config.update_from_flattened_dict(flat)
  return config


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--topology", default="v5e:2x2")
  p.add_argument("--program", default="round")
  p.add_argument("--variant", action="append", default=[])
  p.add_argument("--out", default="")
  p.add_argument("--passes", default="", help="dump dir for XLA pass timings (per variant)")
  args = p.parse_args(argv)
  from tools import aot, split_compile
  from ibmd_jax import sharding as shd
  from ibmd_jax.tasks import make_task
  devices = aot.topology_devices(args.topology)
  rows = {}
  for v in args.variant or ["base:"]:
    name, _, overrides = v.partition(":")
    options = {}
    c = apply(load(args.config), overrides, options)
    if args.passes:
      dump = os.path.join(os.path.abspath(args.passes), name)
      options.update(xla_dump_to=dump, xla_dump_module_metadata=True)
    c.mode, c.aot.topology = "compile", args.topology
    mesh = shd.mesh_from_config(c, devices)
    fn, fargs, _ = aot.build_programs(c, make_task(c), mesh, (args.program,))[args.program]
    t0 = time.time()
    lowered = split_compile.lower(fn, *fargs)  # a split round: its two programs
    t1 = time.time()
    compiled = lowered.compile(compiler_options=options or None)
    t2 = time.time()
    mem = compiled.memory_analysis()
    cost = aot.xla_cost(compiled)
    hlo = compiled.as_text() or ""
    rows[name] = {"overrides": overrides, "lower_s": t1 - t0, "compile_s": t2 - t1,
                  "stablehlo_lines": lowered.as_text().count("\n"),
                  "hlo_instructions": aot.hlo_instructions(hlo),
                  "convolutions": len(re.findall(r" convolution\(", hlo)),
                  "while_loops": len(re.findall(r" while\(", hlo)),
                  "gib_per_chip": aot.chip_bytes(mem) / 2**30,
                  # XLA's counts for the compiled program (a loop body once): a quicker compile
                  # is a different program, so these move too
                  "tflop_per_chip": float(cost.get("flops", 0.0)) / 1e12,
                  "gb_accessed_per_chip": float(cost.get("bytes accessed", 0.0)) / 1e9,
                  "collective_gib_per_chip": sum(aot.collective_bytes(hlo).values()) / 2**30}
    del compiled, lowered  # XLA writes a module's pass metadata when it lets go of it
    print(name, json.dumps(rows[name]), flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"config": args.config, "topology": args.topology, "program": args.program,
                   "variants": rows}, f, indent=1)
  if args.passes:  # read once every compile is done: the metadata files are written late
    for name, r in rows.items():
      r["passes"] = aot.pass_times(os.path.join(os.path.abspath(args.passes), name), r["compile_s"])
      print(name, json.dumps(r["passes"]), flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"config": args.config, "topology": args.topology, "program": args.program,
                   "variants": rows}, f, indent=1)
  lines = ["| variant | overrides | lower s | compile s | StableHLO lines | HLO instructions | "
           "convolutions | while loops |", "|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | `{r['overrides'] or '–'}` | {r['lower_s']:.1f} | {r['compile_s']:.1f}"
                 f" | {r['stablehlo_lines']} | {r['hlo_instructions']} | {r['convolutions']} | "
                 f"{r['while_loops']} |")
  print("\n".join(lines))
  if args.out:
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
