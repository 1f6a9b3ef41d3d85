"""One evaluator for every task: the teacher at several NFEs and samplers, the student at several
step counts, on the task's held-out set, sharded over the mesh; the task's scorer turns outputs
into numbers, `report` into metrics.json, report.md, a plot and the task's artifacts (grids).

Teacher samplers (`eval.teacher_etas`, default (sampler.eta,)): η = 1 is the ancestral sampler
(I2SB's DDPM posterior; OT-ODE on an OT-ODE bridge), η = 0 DBIM's deterministic sampler (booted
with noise out of x_T), the paper's teacher baseline for DDBM/DBIM teachers. The first η listed is
the group "teacher", the others "teacher_eta<η>". Toys also sample their closed-form teacher
("exact_teacher", `eval.teachers`).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import jax
import numpy as np

from ibmd_jax import api, report
from ibmd_jax import options as options_lib
from ibmd_jax import paths
from ibmd_jax import sharding as shd
from ibmd_jax import state as state_lib
from ibmd_jax.ibmd import IBMD
from ibmd_jax.samplers import sample
from ibmd_jax.tasks.base import Task
from ibmd_jax.writer import MetricWriter

MODEL_INPUTS = ("xT", "mask", "label")


def teacher_etas(ec, sampler_eta: float) -> tuple:
  """eval.teacher_etas (ec: the eval settings), or (sampler.eta,) when empty."""
  etas = tuple(float(e) for e in ec["teacher_etas"]) or (float(sampler_eta),)
  if any(not 0.0 <= e <= 1.0 for e in etas):
    raise ValueError(f"eval.teacher_etas must lie in [0, 1], got {etas}")
  return etas


def sampler_label(task: Task, eta: float) -> str:
  if eta == 1.0:
    if task.bridge.ot_ode:
      return "OT-ODE"
    return "DDPM" if task.bridge.kind == "i2sb" else "ancestral"
  return f"DBIM η={eta:g}"


def distilled_teacher(which: str, task: Task):
  """x̂0* of the distillation: the task's network, or its closed form (which = distill.teacher:
  'network' or 'exact')."""
  if which not in ("exact", "network"):
    raise ValueError(f"distill.teacher must be 'exact' or 'network', got {which!r}")
  if which == "network":
    return task.net
  if task.exact is None:
    raise ValueError("distill.teacher='exact' needs a task with a closed-form teacher (the "
                     "toys); use 'network'")
  return task.exact


def make_ibmd(opts: options_lib.RunOptions, task: Task) -> IBMD:
  """The run's IBMD: the task's network as critic and generator, distilled_teacher as x̂0*
  (api.make_ibmd, as api.distill builds it). (A ConfigDict, from tools and tests, is read into
  options.)"""
  opts = options_lib.from_config(opts)
  return api.make_ibmd(distilled_teacher(opts.distill_teacher, task), task.net, task.bridge,
                       opts.distill, task.data_channels)


def _samplers(opts: options_lib.RunOptions, task: Task, teacher_params, gen_params, mesh,
              key) -> list:
  """[(group, label, count, jitted fn(params, batch, key), params, key)]."""
  opts = options_lib.from_config(opts)
  ec, eta0 = opts.task.eval, opts.task.sampler_eta
  rep, bsh = shd.replicated(mesh), shd.batch_sharding(mesh)
  out = []

  def put(tree):
    if state_lib.is_abstract(tree):
      return tree  # compile mode (tools.aot): shapes only
    return jax.device_put(tree, shd.state_shardings(mesh, tree))

  teachers = [str(t) for t in ec["teachers"]]
  if "exact" in teachers and task.exact is not None:
    groups = [("exact_teacher", "exact teacher (closed form)", task.exact, eta0, 200_000)]
  else:
    groups = []
  if "network" in teachers:
    for i, eta in enumerate(teacher_etas(ec, eta0)):
      name = "teacher" if i == 0 else f"teacher_eta{eta:g}"
      groups.append((name, f"teacher ({sampler_label(task, eta)})", task.net, eta, 100_000 * i))
  t_params = put(teacher_params) if teacher_params is not None else None
  t_sh = shd.state_shardings(mesh, t_params)
  for name, label, predict, eta, offset in groups:
    for nfe in (int(n) for n in ec["teacher_nfes"]):
      def t_fn(params, batch, k, nfe=nfe, predict=predict, eta=eta):
        return sample(predict, params, task.bridge, batch["xT"], k, nfe, eta=eta,
                      label=batch.get("label"), mask=batch.get("mask"))
      out.append((name, label, nfe, jax.jit(t_fn, in_shardings=(t_sh, bsh, rep),
                                            out_shardings=bsh),
                  t_params, jax.random.fold_in(key, offset + nfe)))
  if gen_params is not None:
    ib = make_ibmd(opts, task)
    g_params = put(gen_params)
    g_sh = shd.state_shardings(mesh, g_params)
    for steps in (int(s) for s in ec["student_steps"]):
      def g_fn(params, batch, k, steps=steps):
        return ib.generate(params, batch["xT"], k, label=batch.get("label"),
                           mask=batch.get("mask"), n_steps=steps)
      label = f"IBMD student (trained for {ib.n_steps} step{'s' if ib.n_steps > 1 else ''})"
      out.append(("student", label, steps, jax.jit(g_fn, in_shardings=(g_sh, bsh, rep),
                                                            out_shardings=bsh),
                  g_params, jax.random.fold_in(key, 10_000 + steps)))
  return out


def check(opts: options_lib.RunOptions, task: Task) -> None:
  """Evaluation settings checked before any training (eval and pipeline modes)."""
  ec = options_lib.from_config(opts).task.eval
  if not ec["teacher_nfes"] or min(int(n) for n in ec["teacher_nfes"]) < 1:
    raise ValueError(f"eval.teacher_nfes must be a non-empty list of NFEs >= 1, got "
                     f"{ec['teacher_nfes']}")
  if ec["student_steps"] and min(int(n) for n in ec["student_steps"]) < 1:
    raise ValueError(f"eval.student_steps must be steps >= 1, got {ec['student_steps']}")
  for t in ec["teachers"]:
    if t not in ("network", "exact"):
      raise ValueError(f"eval.teachers entries must be 'network' or 'exact', got {t!r}")
  teacher_etas(ec, 1.0)
  task.check_eval(ec)


def evaluate(opts: options_lib.RunOptions, workdir: str, task: Task, teacher_params: Any,
             gen_params: Any = None, writer: Optional[MetricWriter] = None, mesh=None,
             step: Optional[int] = None) -> dict:
  """Samples every sampler on the eval set, scores, writes <workdir>/eval/ and returns the results.

  gen_params None evaluates the teacher alone. mesh: default the run's (opts.mesh). The numbers also go to
  `writer` (mode 'eval', at `step`, default distill.rounds). (A ConfigDict, from tools and tests,
  is read into options.)
  """
  opts = options_lib.from_config(opts)
  check(opts, task)
  mesh = shd.make_mesh(opts.mesh.data, opts.mesh.fsdp) if mesh is None else mesh
  ec = opts.task.eval
  evdata = task.eval_data(ec, int(ec["batch_size"]))
  shd.check_batch(mesh, evdata.batch_size, "eval.batch_size")
  scorer = task.scorer(ec, evdata, workdir, mesh)
  samplers = _samplers(opts, task, teacher_params, gen_params, mesh,
                       jax.random.key(opts.seed + 3))
  seconds: dict[str, list] = {}
  t_start = time.time()
  for j, batch in evdata.batches():
    valid = evdata.valid(j)
    rows = shd.host_rows(evdata.batch_size)
    gb = {k: shd.global_batch(mesh, np.asarray(v)[rows]) for k, v in batch.items()}
    model_batch = {k: gb[k] for k in MODEL_INPUTS if k in gb}
    scorer.observe(gb, valid)
    for group, _, count, fn, params, k in samplers:
      kb = jax.random.fold_in(k, j)
      name = f"{group}/{count}"
      if name not in seconds:  # compile and warm up outside the timing
        jax.block_until_ready(fn(params, model_batch, kb))
        seconds[name] = []
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(params, model_batch, kb))
      seconds[name].append((time.perf_counter() - t0) / evdata.batch_size)
      scorer.add(name, out, gb, valid)
  results: dict[str, Any] = {
      "num_examples": evdata.n, "batch_size": evdata.batch_size, "devices": int(mesh.devices.size),
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "device_kind": str(jax.devices()[0].device_kind), "jax": jax.__version__,
      "eval_seconds": time.time() - t_start, **scorer.meta(), "groups": [], "labels": {},
      "baselines": {}}
  for key, (label, row) in scorer.baselines().items():
    results[key] = row
    results["baselines"][key] = label
  for group, label, count, *_ in samplers:
    if group not in results:
      results[group] = {}
      results["groups"].append(group)
      results["labels"][group] = label
    name = f"{group}/{count}"
    results[group][str(count)] = {"nfe": count, **scorer.summarise(name),
                                  "s_per_sample": float(np.median(seconds[name]))}
  results.setdefault("student", {})
  if writer is not None:
    writer.write("eval", opts.distill.rounds if step is None else step,
                 flat_metrics(results), echo=False)
  if jax.process_index() == 0:
    # written locally (plots, image grids, npz) and copied to a gs:// workdir at the end
    with paths.staged(paths.join(workdir, "eval")) as out_dir:
      artifacts = scorer.artifacts(out_dir, results)
      table = report.write_report(out_dir, results, scorer.columns, scorer.header(results),
                                  scorer.plot_panels(results), artifacts)
    print(table, flush=True)
  return results


def flat_metrics(results: dict) -> dict:
  """{<group>_nfe<k>_<metric> (teachers), student_<k>step_<metric>, <baseline>_<metric>}: finite
  numbers only (the reference's PSNR against itself is +inf)."""
  flat = {}
  for key in results["baselines"]:
    flat.update({f"{key}_{m}": v for m, v in results[key].items()})
  for g in results["groups"]:
    for c, row in results[g].items():
      prefix = f"student_{c}step" if g == "student" else f"{g}_nfe{c}"
      flat.update({f"{prefix}_{m}": v for m, v in row.items() if m != "nfe"})
  return {k: v for k, v in flat.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
