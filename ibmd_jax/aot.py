"""Compile mode: the launcher's own programs compiled for a TPU slice on a CPU host, with their
per-chip memory, FLOPs and time estimates (``--config.mode=compile``).

libtpu's compile-only client (``pip install -e ".[tpu]"``) describes a slice's chips without
having them: ``jax.experimental.topologies.get_topology_desc("v5p:4x4x4", "tpu").devices``. The
programs are built by the same functions the training modes use — ``programs.teacher_program`` (the
teacher step), ``api.round_program`` (the fused IBMD round) and the evaluator's samplers (the
teacher at its largest NFE, the student) — on a mesh of those chips with the config's mesh
shape, shardings, donation, dtype and remat, lowered from ShapeDtypeStructs (nothing is
allocated) and compiled by XLA's TPU compiler. Per program and chip: argument / output / alias /
temporary bytes and their total against the chip's HBM; XLA's FLOPs, bytes accessed and
``optimal_seconds``; a roofline estimate (the larger of FLOPs ÷ peak and bytes ÷ bandwidth) of
step time and images per second per chip; the compile time. ``<workdir>/aot.json`` and
``aot.md`` hold them; a program that does not fit makes the run exit 1, naming it and the bytes
missing.

XLA's cost analysis counts the body of a loop once: the fused round runs its critic steps in a
``scan`` and the samplers their NFE steps in a loop, so "TFLOP / chip" is XLA's count with each
loop body once (for the round: one critic step and the generator step), labelled so in aot.md.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax import sharding as shd
from ibmd_jax.errors import ConfigError, RunError

# Public datasheet figures per chip (Google Cloud TPU documentation, system architecture pages:
# https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): HBM GiB, dense bf16 TFLOP/s, HBM GB/s.
CHIPS = {
    "v4": dict(hbm_gib=32.0, bf16_tflops=275.0, hbm_gbps=1228.0,
               source="https://cloud.google.com/tpu/docs/v4"),
    "v5e": dict(hbm_gib=16.0, bf16_tflops=197.0, hbm_gbps=819.0,
                source="https://cloud.google.com/tpu/docs/v5e"),
    "v5p": dict(hbm_gib=95.0, bf16_tflops=459.0, hbm_gbps=2765.0,
                source="https://cloud.google.com/tpu/docs/v5p"),
    "v6e": dict(hbm_gib=32.0, bf16_tflops=918.0, hbm_gbps=1640.0,
                source="https://cloud.google.com/tpu/docs/v6e"),
}
PROGRAMS = ("teacher_step", "round", "teacher_sampler", "student")
INSTALL_HINT = ('compile mode needs libtpu\'s compile-only client: pip install -e ".[tpu]" '
                '(or pip install "jax[tpu]==<your jax version>")')


class DoesNotFit(RunError):
  """A compiled program needs more memory per chip than the chip has."""


def chip_of(topology: str) -> str:
  kind = topology.split(":", 1)[0].lower()
  if kind not in CHIPS:
    raise ConfigError(f"aot.topology={topology!r}: unknown chip {kind!r}; choose from "
                      f"{sorted(CHIPS)} (e.g. v5e:4x4, v5p:4x4x4, v6e:4x4, v4:2x2x2)")
  return kind


def topology_devices(topology: str) -> list:
  """The chips of a TPU slice, from libtpu's compile-only client."""
  chip_of(topology)
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # libtpu missing, or a topology it does not know
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if importlib.util.find_spec("libtpu") is None:
      raise ConfigError(f"{INSTALL_HINT} (libtpu is not installed; JAX said: {msg})") from e
    raise ConfigError(f"aot.topology={topology!r} is not a TPU slice libtpu can describe: {msg}. "
                      "Names look like v5e:4x4, v5p:4x4x4, v6e:4x4, v4:2x2x2") from e
  return list(desc.devices)


def _abstract(x, sharding):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def batch_spec(task, role: str, batch_size: int, mesh, group: int = 0) -> dict:
  """ShapeDtypeStructs of one global training or evaluation batch, sharded on its batch axis."""
  ex = task.example()
  per = tuple(ex["x"].shape[1:])
  lead = (group,) if group else ()
  sh = shd.batch_sharding(mesh, 1 if group else 0)
  keys = {"teacher": ("x0", "xT"), "distill": ("xT",), "eval": ("xT",)}[role]
  out = {k: jax.ShapeDtypeStruct(lead + (batch_size,) + per, jnp.float32, sharding=sh)
         for k in keys}
  if getattr(task, "masked", False):
    out["mask"] = jax.ShapeDtypeStruct(lead + (batch_size,) + per[:-1] + (1,), jnp.float32,
                                       sharding=sh)
  if "label" in ex:
    out["label"] = jax.ShapeDtypeStruct(lead + (batch_size,), jnp.int32, sharding=sh)
  return out


def _key(mesh):
  return jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=shd.replicated(mesh))


def build_programs(config, task, mesh, which=PROGRAMS) -> dict:
  """{name: (jitted fn, abstract args, images per call)} for the config on this mesh."""
  from ibmd_jax import api, evaluate, programs  # pylint: disable=g-import-not-at-top
  out = {}
  teacher_abs = programs.teacher_abstract(task, mesh)
  if "teacher_step" in which:
    fn, planned = programs.teacher_program(config, task, mesh)
    b = int(config.teacher.batch_size)
    out["teacher_step"] = (fn, (planned.abstract, batch_spec(task, "teacher", b, mesh),
                                _key(mesh)), b)
  if "round" in which:
    opts = api.DistillOptions.from_config(config)
    shd.check_batch(mesh, opts.batch_size, "distill.batch_size")
    ib = evaluate.make_ibmd(config, task)
    fn, planned, teacher_sh = api.round_program(ib, task.net, teacher_abs, teacher_abs,
                                                task.example(), opts, mesh)
    t_abs = jax.tree.map(lambda x, s: _abstract(x, s), teacher_abs, teacher_sh)
    batch = batch_spec(task, "distill", opts.batch_size, mesh, group=opts.critic_steps + 1)
    out["round"] = (fn, (planned.abstract, t_abs, batch, _key(mesh)), opts.batch_size)
  if {"teacher_sampler", "student"} & set(which):
    eb = int(config.eval.batch_size)
    shd.check_batch(mesh, eb, "eval.batch_size")
    gen_abs = None
    if "student" in which:
      opts = api.DistillOptions.from_config(config)
      ib = evaluate.make_ibmd(config, task)
      planned, _, _ = api.plan_state(ib, task.net, teacher_abs, task.example(), opts, mesh)
      gen_abs = planned.abstract.gen_ema
    samplers = evaluate._samplers(config, task, teacher_abs, gen_abs, mesh,  # pylint: disable=protected-access
                                  jax.random.key(0))
    batch = batch_spec(task, "eval", eb, mesh)
    top = max(int(n) for n in config.eval.teacher_nfes)
    for group, _, count, fn, params, _ in samplers:
      if group == "teacher" and count == top and "teacher_sampler" in which:
        out["teacher_sampler"] = (fn, (params, batch, _key(mesh)), eb)
      if group == "student" and count == max(int(s) for s in config.eval.student_steps) \
          and "student" in which:
        out["student"] = (fn, (params, batch, _key(mesh)), eb)
  return out


@dataclasses.dataclass
class Compiled:
  name: str
  argument: int
  output: int
  alias: int
  temp: int
  code: int
  flops: float
  bytes_accessed: float
  optimal_seconds: Optional[float]
  compile_s: float
  images: int

  @property
  def total(self) -> int:
    """Bytes a chip holds while the program runs: arguments + outputs not aliased to them +
    temporaries + code."""
    return self.argument + self.output - self.alias + self.temp + self.code


def compile_one(name: str, fn, args, images: int) -> Compiled:
  t0 = time.time()
  compiled = fn.lower(*args).compile()
  dt = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  opt = cost.get("optimal_seconds")
  return Compiled(name=name, argument=int(mem.argument_size_in_bytes),
                  output=int(mem.output_size_in_bytes), alias=int(mem.alias_size_in_bytes),
                  temp=int(mem.temp_size_in_bytes),
                  code=int(getattr(mem, "generated_code_size_in_bytes", 0) or 0),
                  flops=float(cost.get("flops", 0.0)),
                  bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                  optimal_seconds=None if opt is None else float(opt), compile_s=dt,
                  images=images)


def estimate(c: Compiled, chip: dict, chips: int) -> dict:
  """Roofline step time per chip and images per second per chip (estimates)."""
  t_flops = c.flops / (chip["bf16_tflops"] * 1e12)
  t_bytes = c.bytes_accessed / (chip["hbm_gbps"] * 1e9)
  t = max(t_flops, t_bytes)
  return {"roofline_s": t, "bound": "compute" if t_flops >= t_bytes else "memory",
          "images_per_s_per_chip": (c.images / chips / t) if t > 0 else None}


def _xla_oom(message: str) -> Optional[tuple[float, float]]:
  """(GiB required, GiB available) from XLA's out-of-memory compile error, or None."""
  m = re.search(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", message)
  if m is None:
    return None if "Ran out of memory" not in message else (float("nan"), float("nan"))
  return float(m.group(1)), float(m.group(2))


def _gib(b: float) -> float:
  return b / 2**30


def run(config, workdir: str, task=None) -> dict:
  """Compile mode (module docstring): writes aot.json and aot.md, raises DoesNotFit."""
  from ibmd_jax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  ac = config.aot
  topology = str(ac.topology)
  kind = chip_of(topology)
  chip = CHIPS[kind]
  devices = topology_devices(topology)
  mesh = shd.mesh_from_config(config, devices)
  task = task or tasks_lib.make_task(config)
  which = tuple(str(p) for p in ac.programs)
  bad = [p for p in which if p not in PROGRAMS]
  if bad:
    raise ConfigError(f"aot.programs has unknown {bad}; choose from {list(PROGRAMS)}")
  programs = build_programs(config, task, mesh, which)
  hbm = chip["hbm_gib"] * 2**30
  rows, results = [], {}
  for name in which:
    if name not in programs:
      continue
    fn, args, images = programs[name]
    print(f"[compile] {name} for {topology} ({len(devices)} chips, mesh "
          f"{dict(mesh.shape)}) ...", flush=True)
    try:
      c = compile_one(name, fn, args, images)
    except Exception as e:  # XLA refuses a program that cannot fit: RESOURCE_EXHAUSTED
      need = _xla_oom(str(e))
      if need is None:
        raise
      results[name] = {"fits": False, "total": int(need[0] * 2**30), "hbm": int(hbm),
                       "xla_error": str(e).strip().splitlines()[-1][:500]}
      print(f"[compile] {name}: does not fit, XLA: {results[name]['xla_error']}", flush=True)
      continue
    est = estimate(c, chip, len(devices))
    results[name] = dict(dataclasses.asdict(c), total=c.total, fits=c.total <= hbm,
                         hbm=int(hbm), **est)
    rows.append(c)
    print(f"[compile] {name}: {_gib(c.total):.2f} GiB of {chip['hbm_gib']:g} per chip, "
          f"{c.flops / 1e12:.3g} TFLOP per chip, compiled in {c.compile_s:.1f} s", flush=True)
  report = {"topology": topology, "chip": kind, "chips": len(devices),
            "mesh": {k: int(v) for k, v in mesh.shape.items()}, "chip_figures": chip,
            "jax": jax.__version__, "programs": results}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "aot.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(workdir, "aot.md"), "w") as f:
    f.write(markdown(report) + "\n")
  print(markdown(report), flush=True)
  over = [(n, r) for n, r in results.items() if not r["fits"]]
  if over:
    raise DoesNotFit("; ".join(
        f"{n} needs {_gib(r['total']):.2f} GiB per chip, {_gib(r['total'] - hbm):.2f} GiB more "
        f"than a {kind} chip's {chip['hbm_gib']:g} GiB"
        + (f" (XLA: {r['xla_error']})" if "xla_error" in r else "") for n, r in over)
        + " (try mesh.fsdp, model.remat, a smaller batch, or aot.search=True)")
  return report


def markdown(report: dict) -> str:
  chip = report["chip_figures"]
  lines = [f"Compiled for **{report['topology']}** ({report['chips']} chips, mesh "
           f"{report['mesh']}), JAX {report['jax']}. Per chip: {chip['hbm_gib']:g} GiB HBM, "
           f"{chip['bf16_tflops']:g} bf16 TFLOP/s, {chip['hbm_gbps']:g} GB/s ({chip['source']}).",
           "", "| program | arguments GiB | outputs GiB | aliased GiB | temporaries GiB | total "
           "GiB | fits | TFLOP / chip | XLA optimal_seconds (est.) | roofline s (est.) | images/s "
           "per chip (est.) | compile s |", "|" + "---|" * 12]
  for name, r in report["programs"].items():
    if "xla_error" in r:
      lines.append(f"| {name} | – | – | – | – | {_gib(r['total']):.3f} (XLA) | **no** | – | – | – "
                   f"| – | – |")
      continue
    ips = r["images_per_s_per_chip"]
    opt = r["optimal_seconds"]
    lines.append(
        f"| {name} | {_gib(r['argument']):.3f} | {_gib(r['output']):.3f} | {_gib(r['alias']):.3f}"
        f" | {_gib(r['temp']):.3f} | {_gib(r['total']):.3f} | {'yes' if r['fits'] else '**no**'}"
        f" | {r['flops'] / 1e12:.4g} | {'–' if opt is None else f'{opt:.4g}'} | "
        f"{r['roofline_s']:.4g} ({r['bound']}) | {'–' if ips is None else f'{ips:.4g}'} | "
        f"{r['compile_s']:.1f} |")
  return "\n".join(lines)
