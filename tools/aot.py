"""Compile mode: the launcher's own programs compiled for a TPU slice on a CPU host, with their
per-chip memory, FLOPs and time estimates (``--config.mode=compile``).

libtpu's compile-only client (``pip install -e ".[tpu]"``) describes a slice's chips without
having them: ``jax.experimental.topologies.get_topology_desc("v5p:4x4x4", "tpu").devices``. The
programs are built by the same functions the training modes use — ``programs.teacher_program`` (the
teacher step), ``api.round_program`` (the fused IBMD round) and the evaluator's samplers (the
teacher at its largest NFE, the student) — on a mesh of those chips with the config's mesh
shape, shardings, donation, dtype and remat, lowered from ShapeDtypeStructs (nothing is
allocated) and compiled by XLA's TPU compiler. Per program and chip: argument / output / alias /
temporary bytes and their total against the HBM libtpu lets a program use (tools/chips.py);
XLA's FLOPs, bytes accessed and
``optimal_seconds``; the bytes its collectives (all-gather, reduce-scatter, all-reduce, ...) move
per chip, read off the compiled HLO; a roofline estimate (the largest of FLOPs ÷ peak, HBM bytes
÷ HBM bandwidth and collective bytes ÷ inter-chip bandwidth) of step time and images per second per chip; the compile time. ``<workdir>/aot.json`` and
``aot.md`` hold them; a program that does not fit makes the run exit 1, naming it and the bytes
missing.

XLA's cost analysis counts the body of a loop once: the round runs its critic steps in a ``scan``
(and a multi-step generator's chain, gradient accumulation's microbatches), the samplers their
steps in one, so XLA's "TFLOP / chip" holds one of each. The estimates scale each program by what
it runs ÷ what XLA counted (``loop_factors``, tools/loops.py; a split round: each of its two
programs by its own factor, from its own counts), so that a round with 5 critic steps is estimated
at its 5 critic steps. aot.md shows XLA's count, the factor and the FLOPs per call.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax import sharding as shd
from ibmd_jax.errors import ConfigError, RunError
from tools import loops, podcmd, split_compile
# The chips, the HLO readers and the roofline, under the names compile mode has always had.
from tools.chips import CHIPS, INSTALL_HINT, chip_of, device_figures, topology_devices  # noqa: F401
from tools.hlo import (COLLECTIVE_OPS, HLO_BYTES, collective_bytes, hlo_instructions,  # noqa: F401
                       pass_times, xla_cost, xla_oom as _xla_oom)
from tools.roofline import estimate
from tools.split_compile import chip_bytes  # noqa: F401

PROGRAMS = ("teacher_step", "round", "teacher_sampler", "student")


class DoesNotFit(RunError):
  """A compiled program needs more memory per chip than the chip has."""


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
    t_abs = api.frozen_teacher(jax.tree.map(lambda x, s: _abstract(x, s), teacher_abs,
                                            teacher_sh), opts.teacher_dtype)
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



def argument_bytes(args) -> int:
  """Bytes of a program's arguments on one chip, from their shapes and shardings (no compile;
  TPU tile padding not counted): what the chip holds before any activation."""
  total = 0
  for x in jax.tree.leaves(args):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None \
        else x.shape
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      continue  # a PRNG key: a few bytes
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


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
  collective: int
  compile_s: float
  images: int
  # a split round (distill.split_round): each program's own compile time, critic then generator,
  # and how many compiled at once (aot.compile_threads)
  parts_s: tuple = ()
  threads: int = 1
  # the optimised program's size (HLO instructions; a split round: both programs)
  hlo_instructions: int = 0
  # a split round: each program's own XLA counts ({flops, bytes_accessed, collective}), critic
  # then generator, so that the estimate scales each by its own loops
  parts_cost: tuple = ()

  @property
  def total(self) -> int:
    """Bytes a chip holds while the program runs: arguments + outputs not aliased to them +
    temporaries + code."""
    return self.argument + self.output - self.alias + self.temp + self.code


def _parts(parts_s, threads) -> str:
  """' (critic 600 s + generator 700 s, one after the other)' for a split round, else ''."""
  if not parts_s:
    return ""
  how = "at once" if threads > 1 else "one after the other"
  return f" (critic {parts_s[0]:.0f} s, generator {parts_s[1]:.0f} s, {how})"


def compile_one(name: str, fn, args, images: int, options: Optional[dict] = None,
                threads: int = 0) -> Compiled:
  """Lowers and compiles one program; `threads` is for a split round
  (split_compile.SplitLowered.compile): 1 compiles its two programs one after the other, 2 at
  once, 0 chooses from host memory."""
  t0 = time.time()
  lowered = split_compile.lower(fn, *args)
  # No persistent-cache entries: libtpu's compile-only client cannot read them back ("PjRtCompiler
  # must be constructed with a Client"), so they are waste, and a later compile of the same program
  # in this process warns on them. (The launcher turns the cache off in compile mode; this covers
  # in-process use, where JAX has fixed the cache switch for the process.) The write threshold is
  # read at every write, so raising it here stops them and the old value comes back after.
  key = "jax_persistent_cache_min_compile_time_secs"
  keep = getattr(jax.config, key)
  jax.config.update(key, float("inf"))
  try:
    if isinstance(lowered, split_compile.SplitLowered):
      compiled = lowered.compile(
          compiler_options=options or None, threads=threads,
          on_done=lambda part, s: print(f"[compile] {name}: {part} program compiled in {s:.1f} s",
                                        flush=True))
    else:
      compiled = lowered.compile(compiler_options=options or None)
  finally:
    jax.config.update(key, keep)
  dt = time.time() - t0
  mem = compiled.memory_analysis()
  cost = xla_cost(compiled)
  opt = cost.get("optimal_seconds")
  text = compiled.as_text() or ""
  coll = sum(collective_bytes(text).values())
  parts_cost = ()
  if isinstance(compiled, split_compile.SplitCompiled):
    parts_cost = tuple(
        {"flops": float(xla_cost(p).get("flops", 0.0)),
         "bytes_accessed": float(xla_cost(p).get("bytes accessed", 0.0)),
         "collective": int(sum(collective_bytes(p.as_text() or "").values()))}
        for p in compiled.parts)
  return Compiled(name=name, argument=int(mem.argument_size_in_bytes),
                  output=int(mem.output_size_in_bytes), alias=int(mem.alias_size_in_bytes),
                  temp=int(mem.temp_size_in_bytes),
                  code=int(getattr(mem, "generated_code_size_in_bytes", 0) or 0),
                  flops=float(cost.get("flops", 0.0)),
                  bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                  # XLA's own estimate; negative (meaningless) for some big programs: dropped
                  optimal_seconds=None if opt is None or opt < 0 else float(opt),
                  collective=int(coll),
                  compile_s=dt,
                  images=images,
                  parts_s=tuple(getattr(compiled, "seconds", ())),
                  threads=int(getattr(compiled, "threads", 1)),
                  hlo_instructions=hlo_instructions(text),
                  parts_cost=parts_cost)


def _gib(b: float) -> float:
  return b / 2**30


def loop_factors(config, name: str) -> dict:
  """What one call of a program runs ÷ what XLA counted in it (a loop body once): the round's L
  critic steps, generator chain and microbatches (tools/loops.py; a split round: per program), the
  teacher step's microbatches, a sampler's steps (its largest NFE, the student's steps)."""
  if name == "round":
    acc = loops.round_loops(config)
    return {"factor": acc["factor"], "part_factors": acc["split"]}
  if name == "teacher_step":
    return {"factor": loops.program_factor(name, config)}
  ev = config.eval
  count = (max(int(n) for n in ev.teacher_nfes) if name == "teacher_sampler"
           else max(int(s) for s in ev.student_steps))
  return {"factor": loops.program_factor(name, config, count)}


def run(config, workdir: str, task=None) -> dict:
  """Compile mode (module docstring): writes aot.json and aot.md, raises DoesNotFit; with
  aot.search, runs search() instead."""
  from ibmd_jax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  ac = config.aot
  if ac.get("compile_threads", 0) not in (0, 1, 2):
    raise ConfigError(f"aot.compile_threads={ac.compile_threads!r}: 1 compiles a split round's two "
                      "programs one after the other, 2 at once, 0 chooses from host memory")
  if bool(ac.get("search", False)):
    return search(config, workdir)
  topology = str(ac.topology)
  kind = chip_of(topology)
  chip = device_figures(kind)
  devices = topology_devices(topology)
  mesh = shd.mesh_from_config(config, devices)
  task = task or tasks_lib.make_task(config)
  which = tuple(str(p) for p in ac.programs)
  bad = [p for p in which if p not in PROGRAMS]
  if bad:
    raise ConfigError(f"aot.programs has unknown {bad}; choose from {list(PROGRAMS)}")
  programs = build_programs(config, task, mesh, which)
  hbm = chip["hbm_bytes"]
  rows, results = [], {}
  dump = os.path.join(os.path.abspath(workdir), "xla_dump") if ac.get("pass_times") else ""
  for name in which:
    if name not in programs:
      continue
    fn, args, images = programs[name]
    pre = argument_bytes(args)
    if pre > hbm:  # the state alone does not fit: no need to spend minutes compiling
      results[name] = {"fits": False, "total": pre, "hbm": int(hbm), "argument": pre,
                       "reason": f"its arguments alone (state, batch: {_gib(pre):.2f} GiB per "
                                    "chip from their shapes) exceed the chip's HBM; not compiled"}
      print(f"[compile] {name}: does not fit, {results[name]['reason']}", flush=True)
      continue
    print(f"[compile] {name} for {topology} ({len(devices)} chips, mesh "
          f"{dict(mesh.shape)}; arguments {_gib(pre):.2f} GiB per chip) ...", flush=True)
    options = None
    if dump:
      options = dict(xla_dump_to=os.path.join(dump, name), xla_dump_module_metadata=True)
    try:
      c = compile_one(name, fn, args, images, options, int(ac.get("compile_threads", 0) or 0))
    except Exception as e:  # XLA refuses a program that cannot fit: RESOURCE_EXHAUSTED
      need = _xla_oom(str(e))
      if need is None:
        raise
      results[name] = {"fits": False, "total": int(need[0] * 2**30), "hbm": int(hbm),
                       "xla_error": str(e).strip().splitlines()[-1][:500]}
      print(f"[compile] {name}: does not fit, XLA: {results[name]['xla_error']}", flush=True)
      continue
    est = estimate(c, chip, len(devices), **loop_factors(config, name))
    results[name] = dict(dataclasses.asdict(c), total=c.total, fits=c.total <= hbm,
                         hbm=int(hbm), **est)
    rows.append(c)
    print(f"[compile] {name}: {_gib(c.total):.2f} GiB of {chip['usable_hbm_gib']:g} usable per chip, "
          f"{c.flops / 1e12:.3g} TFLOP per chip, compiled in {c.compile_s:.1f} s"
          + _parts(c.parts_s, c.threads), flush=True)
  if dump:  # read after every compile: XLA writes a module's pass metadata late
    jax.clear_caches()
    for name, r in results.items():
      if "compile_s" in r:
        r["pass_times"] = pass_times(os.path.join(dump, name), r["compile_s"])
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
        f"than the {chip['usable_hbm_gib']:g} GiB a {kind} chip gives a program"
        + (f" (XLA: {r['xla_error']})" if "xla_error" in r else "")
        + (f" ({r['reason']})" if "reason" in r else "") for n, r in over)
        + " (try mesh.fsdp, model.remat, a smaller batch, or aot.search=True)")
  return report


def _chip_line(chip: dict) -> str:
  ici = chip.get("ici_gbps_one_way")
  return (f"{chip['hbm_gib']:g} GiB HBM ({chip.get('usable_hbm_gib', chip['hbm_gib']):g} usable), "
          f"{chip['bf16_tflops']:g} bf16 TFLOP/s, {chip['hbm_gbps']:g} GB/s HBM, "
          + (f"{ici:g} GB/s ICI one way" if ici else "no published ICI figure")
          + f" ({chip['source']})")


def markdown(report: dict) -> str:
  chip = report["chip_figures"]
  lines = [f"Compiled for **{report['topology']}** ({report['chips']} chips, mesh "
           f"{report['mesh']}), JAX {report['jax']}. Per chip: {_chip_line(chip)}. XLA counts a "
           "loop body once (the round's critic steps, a generator chain, microbatches, a "
           "sampler's steps): the estimates scale each program by its loops' runs ('loop "
           "factor', tools/loops.py).",
           "", "| program | arguments GiB | outputs GiB | aliased GiB | temporaries GiB | total "
           "GiB | fits | TFLOP / chip (XLA, loop bodies once) | loop factor | TFLOP / chip per "
           "call | collectives GiB / chip (XLA) | XLA optimal_seconds (est.) | roofline s per "
           "call (est.) | images/s per chip (est.) | compile s |", "|" + "---|" * 15]
  for name, r in report["programs"].items():
    if "xla_error" in r or "reason" in r:
      how = "XLA" if "xla_error" in r else "arguments, from shapes"
      lines.append(f"| {name} | – | – | – | – | {_gib(r['total']):.3f} ({how}) | **no** | – | – | "
                   f"– | – | – | – | – | – |")
      continue
    ips = r["images_per_s_per_chip"]
    opt = r["optimal_seconds"]
    lines.append(
        f"| {name} | {_gib(r['argument']):.3f} | {_gib(r['output']):.3f} | {_gib(r['alias']):.3f}"
        f" | {_gib(r['temp']):.3f} | {_gib(r['total']):.3f} | {'yes' if r['fits'] else '**no**'}"
        f" | {r['flops'] / 1e12:.4g} | {r.get('loop_factor', 1.0):.4g} | "
        f"{r.get('flops_run', r['flops']) / 1e12:.4g} | {_gib(r['collective']):.4g} | "
        f"{'–' if opt is None else f'{opt:.4g}'} | "
        f"{r['roofline_s']:.4g} ({r['bound']}) | {'–' if ips is None else f'{ips:.4g}'} | "
        f"{r['compile_s']:.1f} |")
  for name, r in report["programs"].items():
    if r.get("parts_s"):
      lines.append(f"\n{name}: two programs (distill.split_round), compiled in "
                   f"{r['compile_s']:.1f} s{_parts(r['parts_s'], r.get('threads', 1))}.")
  for name, r in report["programs"].items():
    pt = r.get("pass_times")
    if pt:
      slow = ", ".join(f"{k} {v:.1f} s" for k, v in list(pt["slowest"].items())[:5])
      phases = ", ".join(f"{k} {v:.1f} s" for k, v in pt.get("phases_s", {}).items())
      lines.append(f"\n{name}: compiled in {r['compile_s']:.1f} s; XLA's HLO passes "
                   f"{pt['hlo_passes_s']:.1f} s (slowest: {slow}); phases from the dump: "
                   f"{phases or 'not dumped'}.")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------- search
# The config key that holds each program's global batch.
BATCH_KEY = {"round": "distill.batch_size", "teacher_step": "teacher.batch_size",
             "teacher_sampler": "eval.batch_size", "student": "eval.batch_size"}
SEARCH_FILE = "aot_search.json"


def _fingerprint(config, searched=()) -> str:
  """What a cached candidate depends on besides its own choice: the config with the searched keys
  (mesh, remat, batches, and `searched`: e.g. distill.teacher_dtype) and the search settings left
  out."""
  import hashlib  # pylint: disable=g-import-not-at-top
  d = config.to_dict()
  for key in searched:
    sec, k = key.split(".")
    d.get(sec, {}).pop(k, None)
  d.pop("aot", None)
  d.pop("mesh", None)
  d.pop("workdir", None)
  d.get("model", {}).pop("remat", None)
  for key in BATCH_KEY.values():
    sec, k = key.split(".")
    d.get(sec, {}).pop(k, None)
  d.pop("stop_after_s", None)
  text = json.dumps(d, sort_keys=True, default=str) + "|" + jax.__version__
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# aot.search_quick's XLA option: less scheduling and fusion effort, a much faster compile and a
# slightly understated per-chip memory (measured: docs/tpu.md, "What cuts it").
QUICK_XLA = {"exec_time_optimization_effort": -1}


def candidate_name(fsdp: int, remat: str, per_chip: int, quick: bool = False) -> str:
  return ("quick:" if quick else "") + f"fsdp={fsdp},remat={remat},per_chip={per_chip}"


# A search variant is the remat policy, followed, where aot.search_teacher_dtype or
# aot.search_microbatches are given, by ",teacher_dtype=...,microbatches=..." (round only).
VARIANT_KEYS = {"teacher_dtype": "distill.teacher_dtype", "microbatches": "distill.microbatches"}


def variants(remats, teacher_dtypes=(), microbatches=()) -> list[str]:
  """Every (teacher dtype, microbatches) level in the order given (the cheapest first), each with
  every remat policy: a level is tried at a (mesh, batch) only where the earlier ones do not fit."""
  out = []
  for td in (tuple(teacher_dtypes) or (None,)):
    for mb in (tuple(microbatches) or (None,)):
      extra = (f",teacher_dtype={td}" if td is not None else "") + (
          f",microbatches={int(mb)}" if mb is not None else "")
      out += [f"{r}{extra}" for r in remats]
  return out


def split_variant(variant: str) -> tuple[str, dict]:
  """'full,teacher_dtype=bfloat16,microbatches=2' -> ('full', {config key: value})."""
  remat, *rest = str(variant).split(",")
  extra = {}
  for item in rest:
    k, v = item.split("=", 1)
    extra[VARIANT_KEYS[k]] = int(v) if k == "microbatches" else v
  return remat, extra


def candidate_order(chips: int, fsdps, remats, batches) -> list[tuple[int, str, int]]:
  """(fsdp, remat, per-chip batch), smallest program first: batches ascending, then fsdp
  descending (smaller shards), then remat in the order given (least recomputation first)."""
  fsdps = sorted({int(f) for f in fsdps} or {f for f in range(1, chips + 1) if chips % f == 0},
                 reverse=True)
  bad = [f for f in fsdps if f < 1 or chips % f]
  if bad:
    raise ConfigError(f"aot.search_fsdp={bad} do not divide the slice's {chips} chips")
  return [(f, str(r), int(b)) for b in sorted({int(b) for b in batches}) for f in fsdps
          for r in remats]


def search(config, workdir: str) -> dict:
  """Compiles aot.search_program for every (mesh data x fsdp, remat, per-chip batch) candidate,
  smallest first, and returns the fitting one with the best estimated images/s per chip (printed
  as command-line overrides). Pruning: a (fsdp, remat) that does not fit at a batch is not tried
  at larger ones; at a (fsdp, batch) where a remat policy fits, the later policies in
  aot.search_remat (more recomputation, more FLOPs, never faster by the estimate) are skipped.
  Ties in the estimate (to 4 significant digits) go to the smaller fsdp, the earlier remat, then
  the larger batch.
  Every compiled candidate is kept in <workdir>/aot_search.json: a rerun of the same config
  skips them, so a search cut short by aot.search_budget_s continues where it stopped.

  aot.search_quick compiles the candidates with XLA's exec_time_optimization_effort=-1 (QUICK_XLA:
  about 4x faster at full size, but it understated per-chip memory by 3 % there), then compiles
  the fitting ones at XLA's default, best quick estimate first, until one fits: the winner is
  always a default compile (its memory and estimate are the ones reported)."""
  ac = config.aot
  topology = str(ac.topology)
  kind = chip_of(topology)
  chip = device_figures(kind)
  program = str(ac.search_program)
  if program not in BATCH_KEY:
    raise ConfigError(f"aot.search_program={program!r}: choose one of {list(BATCH_KEY)}")
  from ibmd_jax.models.unet import REMAT_POLICIES  # pylint: disable=g-import-not-at-top
  if "remat" in config.model:
    remats = tuple(str(r) for r in ac.search_remat) or (str(config.model.remat),)
  else:  # a network without remat (the toy MLP): one policy, left as it is
    remats = ("none",)
  bad = [r for r in remats if r not in REMAT_POLICIES]
  if bad:
    raise ConfigError(f"aot.search_remat has unknown {bad}; choose from {list(REMAT_POLICIES)}")
  if not ac.search_batches or min(int(b) for b in ac.search_batches) < 1:
    raise ConfigError("aot.search_batches must list per-chip batch sizes >= 1, e.g. (1, 2, 4, 8)")
  tds = tuple(str(t) for t in ac.get("search_teacher_dtype", ())) if program == "round" else ()
  mbs = tuple(int(m) for m in ac.get("search_microbatches", ())) if program == "round" else ()
  from ibmd_jax.checks import TEACHER_DTYPES  # pylint: disable=g-import-not-at-top
  if [t for t in tds if t not in TEACHER_DTYPES] or [m for m in mbs if m < 1]:
    raise ConfigError(f"aot.search_teacher_dtype={tds} / aot.search_microbatches={mbs}: dtypes "
                      f"from {TEACHER_DTYPES}, microbatches >= 1")
  remats = tuple(variants(remats, tds, mbs))
  devices = topology_devices(topology)
  chips = len(devices)
  order = candidate_order(chips, ac.search_fsdp, remats, ac.search_batches)
  hbm = chip["hbm_bytes"]
  path = os.path.join(workdir, SEARCH_FILE)
  fp = _fingerprint(config, ([VARIANT_KEYS["teacher_dtype"]] if tds else [])
                    + ([VARIANT_KEYS["microbatches"]] if mbs else []))
  cache = {}
  if os.path.exists(path):
    try:
      old = json.load(open(path))
    except (OSError, ValueError) as e:
      raise RunError(f"{path} cannot be read ({e}): move it away to start the search over") from e
    if old.get("fingerprint") == fp and old.get("topology") == topology \
        and old.get("program") == program:
      cache = old.get("candidates", {})
      print(f"[search] {len(cache)} candidates already compiled in {path}", flush=True)
    else:
      print(f"[search] {path} is from another config or slice: starting over", flush=True)
  budget = float(ac.get("search_budget_s", 0.0) or 0.0)
  quick = bool(ac.get("search_quick", False))
  t0 = time.time()
  failed_at: dict = {}  # (fsdp, remat) -> smallest per-chip batch that did not fit
  fit_at: set = set()  # (fsdp, batch) where some remat fitted
  cut = False
  compiled_now = 0

  def save(best=None):
    out = {"topology": topology, "chip": kind, "chips": chips, "program": program,
           "fingerprint": fp, "jax": jax.__version__, "chip_figures": chip, "candidates": cache,
           "best": best, "complete": not cut, "quick": quick}
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(out, f, indent=1)
    os.replace(tmp, path)
    return out

  def get(fsdp, remat, per_chip, fast):
    """The candidate's result (cached or compiled now); None when the budget is spent."""
    nonlocal compiled_now, cut
    name = candidate_name(fsdp, remat, per_chip, fast)
    r = cache.get(name)
    if r is None:
      if budget and compiled_now and time.time() - t0 > budget:  # each call compiles one
        cut = True
        return None
      r = _search_one(config, devices, fsdp, remat, per_chip, program, chip, hbm,
                      QUICK_XLA if fast else None)
      r["quick"] = fast
      cache[name] = r
      compiled_now += 1
      save()
    print(f"[search] {name}: " + (f"{_gib(r['total']):.2f} GiB, "
                                  f"{'fits' if r['fits'] else 'does not fit'}"
                                  + (f", {r['images_per_s_per_chip']:.4g} images/s/chip (est.)"
                                     if r.get("images_per_s_per_chip") else "")
                                  if "total" in r else r.get("error", "?")), flush=True)
    return r

  for fsdp, remat, per_chip in order:
    if failed_at.get((fsdp, remat), 1 << 30) <= per_chip or (fsdp, per_chip) in fit_at:
      continue
    r = get(fsdp, remat, per_chip, quick)
    if r is None:
      break
    if r.get("fits"):
      fit_at.add((fsdp, per_chip))
    elif "total" in r:  # too big; a refused configuration (error) prunes nothing
      failed_at[(fsdp, remat)] = min(per_chip, failed_at.get((fsdp, remat), 1 << 30))

  def score(item):  # estimates equal to 4 significant digits (as printed) are ties
    _, r = item
    return (float(f"{r.get('images_per_s_per_chip') or 0.0:.4g}"), -r["fsdp"],
            -remats.index(r["remat"]) if r["remat"] in remats else 0, r["per_chip"])
  fitting = [(k, r) for k, r in cache.items() if r.get("fits") and not r.get("quick")]
  if quick:  # confirm at XLA's default, best quick estimate first, until one fits
    fitting = []
    ranked = sorted(((k, r) for k, r in cache.items() if r.get("fits") and r.get("quick")),
                    key=score, reverse=True)
    for _, q in ([] if cut else ranked):
      r = get(q["fsdp"], q["remat"], q["per_chip"], False)
      if r is None:
        break
      if r.get("fits"):
        fitting = [(candidate_name(r["fsdp"], r["remat"], r["per_chip"], False), r)]
        break
  best = None
  if fitting:
    name, r = max(fitting, key=score)
    remat, extra = split_variant(r["remat"])
    overrides = [f"--config.mesh.data={chips // r['fsdp']}", f"--config.mesh.fsdp={r['fsdp']}"]
    if "remat" in config.model:
      overrides.append(f"--config.model.remat={remat}")
    overrides += [f"--config.{k}={v}" for k, v in extra.items()]
    overrides.append(f"--config.{BATCH_KEY[program]}={r['per_chip'] * chips}")
    # the complete pod command: the user's own overrides, then every choice that decides the
    # compiled program, and the mode that runs it (tools/podcmd.py)
    chosen = config.copy_and_resolve_references()
    chosen.update_from_flattened_dict(extra)
    plan = podcmd.plan_overrides(chosen, program, chips, r["fsdp"],
                                 remat if "remat" in config.model else None, r["per_chip"],
                                 BATCH_KEY[program])
    user = podcmd.user_overrides(None, podcmd.keys(plan))
    pod = podcmd.pod_command(podcmd.config_file() or "CONFIG.py", topology, user + plan)
    best = dict(r, name=name, overrides=overrides, plan=plan, pod_command=pod)
  report = save(best)
  report["seconds"] = time.time() - t0
  report["compiled_now"] = compiled_now
  with open(os.path.join(workdir, "aot_search.md"), "w") as f:
    f.write(search_markdown(report) + "\n")
  print(search_markdown(report), flush=True)
  if best is None:
    raise DoesNotFit(f"no candidate of the search fits a {kind} chip ({chip['usable_hbm_gib']:g} GiB usable) for "
                     f"{program}" + (" yet: the budget stopped it; rerun to continue" if cut else
                                     ": try more fsdp, remat='full', smaller search_batches"
                                     + (" (with search_quick, none that fitted quickly fitted "
                                        "at XLA's default)" if quick else "")))
  return report


def _search_one(config, devices, fsdp, remat, per_chip, program, chip, hbm,
                options: Optional[dict] = None) -> dict:
  from ibmd_jax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  chips = len(devices)
  variant = remat
  remat, extra = split_variant(variant)
  c = config.copy_and_resolve_references()
  c.update_from_flattened_dict({"mesh.data": chips // fsdp, "mesh.fsdp": fsdp,
                                BATCH_KEY[program]: per_chip * chips, **extra,
                                **({"model.remat": remat} if "remat" in c.model else {})})
  base = {"fsdp": fsdp, "remat": variant, "per_chip": per_chip}
  try:
    mesh = shd.mesh_from_config(c, devices)
    fn, args, images = build_programs(c, tasks_lib.make_task(c), mesh, (program,))[program]
    pre = argument_bytes(args)
    if pre > hbm:  # the state alone is too big: not worth minutes of compiling
      return dict(base, fits=False, total=pre, compile_s=0.0,
                  reason="arguments alone exceed HBM (from shapes; not compiled)")
    got = compile_one(program, fn, args, images, options)
  except (ConfigError, ValueError) as e:  # e.g. a batch the mesh cannot split
    return dict(base, error=str(e).splitlines()[0][:300])
  except Exception as e:  # pylint: disable=broad-except
    need = _xla_oom(str(e))
    if need is None:
      raise
    return dict(base, fits=False, total=int(need[0] * 2**30) if need[0] == need[0] else 0,
                xla_error=str(e).strip().splitlines()[-1][:300])
  return dict(base, **dataclasses.asdict(got), total=got.total, fits=got.total <= hbm,
              **estimate(got, chip, chips, **loop_factors(c, program)))


def search_markdown(report: dict) -> str:
  chip = report["chip_figures"]
  lines = [f"Search for **{report['program']}** on **{report['topology']}** ({report['chips']} "
           f"chips, {chip.get('usable_hbm_gib', chip['hbm_gib']):g} GiB usable each), JAX {report['jax']}: "
           f"{len(report['candidates'])} candidates compiled"
           + ("" if report["complete"] else " (cut short by aot.search_budget_s: rerun to "
              "continue)") + ".", "",
           "| fsdp | remat | batch per chip | XLA effort | total GiB per chip | fits | images/s "
           "per chip (est.) | compile s |", "|" + "---|" * 8]
  for _, r in sorted(report["candidates"].items(),
                     key=lambda kv: (kv[1]["per_chip"], -kv[1]["fsdp"], kv[1]["remat"],
                                     not kv[1].get("quick"))):
    head = (f"| {r['fsdp']} | {r['remat']} | {r['per_chip']} | "
            f"{'quick (-1)' if r.get('quick') else 'default'} |")
    if "total" not in r:
      lines.append(f"{head} – | – | {r['error']} | – |")
      continue
    ips = r.get("images_per_s_per_chip")
    lines.append(f"{head} {_gib(r['total']):.3f} | {'yes' if r['fits'] else 'no'} | "
                 f"{'–' if not ips else f'{ips:.4g}'} | {r.get('compile_s', 0):.1f} |")
  best = report.get("best")
  lines += ["", "Best fitting choice (estimated images/s per chip"
            + (", confirmed at XLA's default effort" if report.get("quick") else "") + "): "
            + ("none" if not best else "`" + " ".join(best["overrides"]) + "`")]
  if best and best.get("pod_command"):
    lines += ["", "Pod command (your overrides, then the plan's; docs/tpu.md, step 4):", "",
              "```bash", best["pod_command"], "```"]
  return "\n".join(lines)
