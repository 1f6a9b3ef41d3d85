r"""The real-image quality benchmark (configs/bench64.py) as resumable stages, and its report.

  python bench/bench64.py --root=DIR [--tasks=sr4,jpeg10,inpaint,sr4_vp] [--budget_s=540]
  python bench/bench64.py --root=DIR --report=docs/results.md [--grids_dir=docs/results]

Every call runs the stages still to do, in order, until --budget_s is spent; a training stage that
is still running then saves its state (the launcher's stop_after_s) and the script exits with 75:
run the same command again to continue (on the GPU tool: one call per 10 minutes). Per task:

  teacher  <root>/<task>/teacher   bridge matching from scratch on the photographs (mode=teacher)
  1step    <root>/<task>/1step     IBMD with a 1-step generator, from that teacher (mode=distill)
  2step    <root>/<task>/2step     IBMD with a 2-step generator (full chain / DMD2 as configured)
  eval1    <root>/<task>/1step     the teacher at every NFE and sampler, and the 1-step student
  eval2    <root>/<task>/2step     the 2-step student
  eval0    <root>/<task>/untrained the 1-step generator as distillation starts it (never updated):
                                   the control that the checks must fail on

Every evaluation saves its outputs (eval/outputs.npz); the report computes all metrics from them
with paired bootstrap intervals (ibmd_jax/eval/bootstrap.py). <root>/stages.json records every
call and each finished stage with its wall time. --variant picks the size: full (64x64, GPU),
cpu32 (32x32, the 2-core CPU benchmark of docs/results.md) or tiny (16x16, seconds, for tests);
--set key=value passes overrides to every stage (e.g. --set teacher.steps=400; a stage's own
mode and student steps stay). --report writes the table per task with the acceptance checks
(docs/results.md explains them) and exits 1 when one fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("sr4", "jpeg10", "inpaint", "sr4_vp")
STAGES = ("teacher", "1step", "2step", "eval1", "eval2", "eval0")
EXIT_RESUME = 75  # ibmd_jax.train.EXIT_RESUME (not imported: this script must not import JAX)
EXIT_SIGTERM = 143
TITLES = {"sr4": "4× super-resolution (bicubic), I2SB bridge, unconditional teacher",
          "jpeg10": "JPEG restoration, quality 10, I2SB bridge, unconditional teacher",
          "inpaint": "centre 32×32 inpainting, I2SB OT-ODE bridge, unconditional, masked",
          "sr4_vp": "4× super-resolution (bicubic), DDBM VP bridge, conditional on xT"}


VARIANTS = ("full", "gpu9", "cpu32", "tiny")


def stage_command(root: str, task: str, stage: str, *, variant: str, sets: list[str],
                  stop_after_s: float) -> tuple[list[str], str]:
  """(argv, workdir) of one stage's launcher call."""
  base = task + ("" if variant == "full" else "," + variant)
  two = stage in ("2step", "eval2")
  arg = base + (",2step" if two else "")
  sub = {"teacher": "teacher", "eval0": "untrained"}.get(stage, "2step" if two else "1step")
  wd = os.path.join(root, task, sub)
  argv = [sys.executable, "-m", "launch.main", f"--config={REPO}/configs/bench64.py:{arg}",
          f"--workdir={wd}", f"--compilation_cache={os.path.join(root, 'jax_cache')}"]
  argv += [f"--config.{s}" for s in sets]  # before the stage's own flags, which define the stage
  teacher = os.path.join(root, task, "teacher", "teacher")
  if stage == "teacher":
    argv += ["--config.mode=teacher"]
  else:
    argv += [f"--config.teacher.checkpoint={teacher}", "--config.teacher.source=checkpoint"]
  if stage in ("1step", "2step"):
    argv += ["--config.mode=distill"]
  if stage.startswith("eval"):
    argv += ["--config.mode=eval", "--config.eval.save_outputs=True",
             f"--config.eval.student_steps=({2 if two else 1},)"]
  if stage in ("eval2", "eval0"):  # the teacher's samples are eval1's
    argv += ["--config.eval.teachers=()"]
  if stage == "eval0":
    argv += ["--config.eval.untrained_student=True"]
  if stage in ("teacher", "1step", "2step") and stop_after_s > 0:
    argv += [f"--config.stop_after_s={stop_after_s:.0f}"]
  return argv, wd


def _load(path: str, default):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _save(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)  # a kill mid-write keeps the previous record


def run_stages(args, stages=STAGES, command=None, tag: str = "bench64") -> int:
  """Runs the stages still to do (args: root, tasks, budget_s, min_start_s, eval_min_s, margin_s,
  variant, set). command(root, task, stage, variant=, sets=, stop_after_s=) -> (argv, workdir),
  default stage_command; bench/digits.py passes its own stages and command."""
  command = command or stage_command
  os.makedirs(args.root, exist_ok=True)
  rec_path = os.path.join(args.root, "stages.json")
  rec = _load(rec_path, {"done": {}, "calls": []})
  if rec.get("variant", args.variant) != args.variant or rec.get("sets", args.set) != args.set:
    sys.exit(f"error: {args.root} was started with variant={rec.get('variant')} "
             f"sets={rec.get('sets')}; this call has variant={args.variant} sets={args.set}: use "
             f"the same options or a new --root")
  rec["variant"], rec["sets"] = args.variant, args.set
  t0 = time.time()
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONUNBUFFERED="1")
  todo = [(t, s) for t in args.tasks for s in stages if f"{t}/{s}" not in rec["done"]]
  for task, stage in todo:
    left = args.budget_s - (time.time() - t0) if args.budget_s > 0 else float("inf")
    need = args.eval_min_s if stage.startswith("eval") else args.min_start_s
    if left < need:
      print(f"[{tag}] {left:.0f} s of the budget left, {task}/{stage} needs {need:.0f} s to "
            f"start: run again to continue", flush=True)
      _save(rec_path, rec)
      return EXIT_RESUME
    stop = max(left - args.margin_s, 1.0) if args.budget_s > 0 else 0.0
    argv, wd = command(args.root, task, stage, variant=args.variant, sets=args.set,
                       stop_after_s=stop)
    os.makedirs(wd, exist_ok=True)
    log = os.path.join(args.root, task, f"{stage}.log")
    print(f"[{tag}] {task}/{stage}: {' '.join(argv[1:])}", flush=True)
    ts = time.time()
    with open(log, "a") as f:
      f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
      f.flush()
      rc = subprocess.call(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    dt = time.time() - ts
    rec["calls"].append({"stage": f"{task}/{stage}", "rc": rc, "s": round(dt, 1)})
    if rc == 0:
      spent = sum(c["s"] for c in rec["calls"] if c["stage"] == f"{task}/{stage}")
      rec["done"][f"{task}/{stage}"] = {"s": round(spent, 1), "calls": sum(
          c["stage"] == f"{task}/{stage}" for c in rec["calls"])}
      _save(rec_path, rec)
      print(f"[{tag}] {task}/{stage} done in {dt:.0f} s", flush=True)
      continue
    _save(rec_path, rec)
    if rc in (EXIT_RESUME, EXIT_SIGTERM):
      print(f"[{tag}] {task}/{stage} saved and stopped after {dt:.0f} s: run again to continue",
            flush=True)
      return EXIT_RESUME
    with open(log) as f:
      tail = f.read()[-3000:]
    print(tail, file=sys.stderr)
    print(f"[{tag}] {task}/{stage} failed with exit code {rc}; its log: {log}", file=sys.stderr)
    return rc
  total = sum(v["s"] for v in rec["done"].values())
  print(f"[{tag}] all stages done ({total:.0f} s of stage time in all)", flush=True)
  return 0


def report(args) -> int:
  sys.path.insert(0, REPO)
  from bench import bench_report  # JAX only here, never in the stage runner
  rec = _load(os.path.join(args.root, "stages.json"), {"done": {}, "calls": []})
  return bench_report.write(args.root, args.tasks, args.report, args.grids_dir, rec,
                            command=" ".join(sys.argv), reps=args.reps, stages=STAGES,
                            titles=TITLES)


def add_stage_args(p, *, budget_s: float, min_start_s: float, eval_min_s: float,
                   margin_s: float) -> None:
  """The stage runner's time options (run_stages), with a driver's defaults."""
  p.add_argument("--budget_s", type=float, default=budget_s,
                 help="wall seconds for this call (0: no limit); then exit 75 to be called again")
  p.add_argument("--min_start_s", type=float, default=min_start_s,
                 help="start a stage only with this much budget left")
  p.add_argument("--eval_min_s", type=float, default=eval_min_s,
                 help="start an evaluation only with this much budget left")
  p.add_argument("--margin_s", type=float, default=margin_s,
                 help="seconds kept for saving and exiting after a stage's stop")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="benchmark directory (one subdirectory per task)")
  p.add_argument("--tasks", default=",".join(TASKS),
                 help=f"comma-separated, from {','.join(TASKS)}")
  add_stage_args(p, budget_s=540.0, min_start_s=90.0, eval_min_s=240.0, margin_s=30.0)
  p.add_argument("--variant", default="full", choices=VARIANTS,
                 help="full: 64x64 (GPU, ~1 h); gpu9: 64x64 sized for 9-minute H200 calls; "
                 "cpu32: the 2-core CPU benchmark; tiny: a smoke run")
  p.add_argument("--tiny", action="store_true", help="same as --variant=tiny")
  p.add_argument("--reps", type=int, default=200, help="bootstrap replicates of the report")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every stage (repeatable), e.g. teacher.steps=400")
  p.add_argument("--report", default="", help="write the tables and checks to this markdown file")
  p.add_argument("--grids_dir", default="", help="where --report copies the grids "
                 "(default: results/ beside the report)")
  args = p.parse_args(argv)
  if args.tiny:
    args.variant = "tiny"
  args.tasks = [t for t in args.tasks.split(",") if t]
  bad = [t for t in args.tasks if t not in TASKS]
  if bad:
    p.error(f"unknown task(s) {bad}; choose from {list(TASKS)}")
  bad = [s for s in args.set if "=" not in s or s.startswith("--")]
  if bad:
    p.error(f"--set takes KEY=VALUE without --config., got {bad}")
  return report(args) if args.report else run_stages(args)


if __name__ == "__main__":
  sys.exit(main())
