r"""The real-image quality benchmark (configs/bench64.py) as resumable stages, and its report.

  python bench/bench64.py --root=DIR [--tasks=sr4,jpeg10,inpaint,sr4_vp] [--budget_s=540]
  python bench/bench64.py --root=DIR --report=docs/results.md [--grids_dir=docs/results]

Every call runs the stages still to do, in order, until --budget_s is spent; a training stage that
is still running then saves its state (the launcher's stop_after_s) and the script exits with 75:
run the same command again to continue (on the GPU tool: one call per 10 minutes). Per task:

  teacher  <root>/<task>/teacher   bridge matching from scratch on the photographs (mode=teacher)
  1step    <root>/<task>/1step     IBMD with a 1-step generator, from that teacher (mode=distill)
  2step    <root>/<task>/2step     IBMD with a 2-step generator (full chain / DMD2 as configured)
  eval1    <root>/<task>/1step     teacher at NFE 1, 2, 4, 10, 100, 1000 and the 1-step student
  eval2    <root>/<task>/2step     the 2-step student (with the teacher at 1 and 100 NFE)

<root>/stages.json records every call and each finished stage with its wall time. --tiny runs the
CPU variant (configs/bench64.py:<task>,tiny); --set key=value passes overrides to every stage
(e.g. --set teacher.steps=400; a stage's own mode, student steps and eval2's NFEs stay). --report writes the paper-style table per task with the
acceptance checks of the benchmark (docs/results.md explains them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("sr4", "jpeg10", "inpaint", "sr4_vp")
STAGES = ("teacher", "1step", "2step", "eval1", "eval2")
EXIT_RESUME = 75  # ibmd_jax.train.EXIT_RESUME (not imported: this script must not import JAX)
EXIT_SIGTERM = 143
TITLES = {"sr4": "4× super-resolution (bicubic), I2SB bridge, unconditional teacher",
          "jpeg10": "JPEG restoration, quality 10, I2SB bridge, unconditional teacher",
          "inpaint": "centre 32×32 inpainting, I2SB OT-ODE bridge, unconditional, masked",
          "sr4_vp": "4× super-resolution (bicubic), DDBM VP bridge, conditional on xT"}


def stage_command(root: str, task: str, stage: str, *, tiny: bool, sets: list[str],
                  stop_after_s: float) -> tuple[list[str], str]:
  """(argv, workdir) of one stage's launcher call."""
  base = task + (",tiny" if tiny else "")
  two = stage in ("2step", "eval2")
  arg = base + (",2step" if two else "")
  wd = os.path.join(root, task, "teacher" if stage == "teacher" else ("2step" if two else "1step"))
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
  if stage == "eval1":
    argv += ["--config.mode=eval", "--config.eval.student_steps=(1,)"]
  if stage == "eval2":
    nfes = "(1,2)" if tiny else "(1,100)"
    argv += ["--config.mode=eval", "--config.eval.student_steps=(2,)",
             f"--config.eval.teacher_nfes={nfes}"]
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


def run_stages(args) -> int:
  os.makedirs(args.root, exist_ok=True)
  rec_path = os.path.join(args.root, "stages.json")
  rec = _load(rec_path, {"done": {}, "calls": []})
  if rec.get("tiny", args.tiny) != args.tiny or rec.get("sets", args.set) != args.set:
    sys.exit(f"error: {args.root} was started with tiny={rec.get('tiny')} sets={rec.get('sets')}; "
             f"this call has tiny={args.tiny} sets={args.set}: use the same options or a new --root")
  rec["tiny"], rec["sets"] = args.tiny, args.set
  t0 = time.time()
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONUNBUFFERED="1")
  todo = [(t, s) for t in args.tasks for s in STAGES if f"{t}/{s}" not in rec["done"]]
  for task, stage in todo:
    left = args.budget_s - (time.time() - t0) if args.budget_s > 0 else float("inf")
    need = args.eval_min_s if stage.startswith("eval") else args.min_start_s
    if left < need:
      print(f"[bench64] {left:.0f} s of the budget left, {task}/{stage} needs {need:.0f} s to "
            f"start: run again to continue", flush=True)
      _save(rec_path, rec)
      return EXIT_RESUME
    stop = max(left - args.margin_s, 1.0) if args.budget_s > 0 else 0.0
    argv, wd = stage_command(args.root, task, stage, tiny=args.tiny, sets=args.set,
                             stop_after_s=stop)
    os.makedirs(wd, exist_ok=True)
    log = os.path.join(args.root, task, f"{stage}.log")
    print(f"[bench64] {task}/{stage}: {' '.join(argv[1:])}", flush=True)
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
      print(f"[bench64] {task}/{stage} done in {dt:.0f} s", flush=True)
      continue
    _save(rec_path, rec)
    if rc in (EXIT_RESUME, EXIT_SIGTERM):
      print(f"[bench64] {task}/{stage} saved and stopped after {dt:.0f} s: run again to continue",
            flush=True)
      return EXIT_RESUME
    with open(log) as f:
      tail = f.read()[-3000:]
    print(tail, file=sys.stderr)
    print(f"[bench64] {task}/{stage} failed with exit code {rc}; its log: {log}", file=sys.stderr)
    return rc
  total = sum(v["s"] for v in rec["done"].values())
  print(f"[bench64] all stages done ({total:.0f} s of stage time in all)", flush=True)
  return 0


# ---------------------------------------------------------------------- report
# Each metric of the teacher-vs-input check, with +1 where higher is better.
METRICS = (("psnr", +1), ("ssim", +1), ("swd", -1), ("fd", -1), ("kid", -1))


# FID / KID on Inception features when they were evaluated, else the weight-free pixel-feature ones.
_KEYS = {"fd": ("fid", "fd_pixel"), "kid": ("kid", "kid_pixel")}


def _metric(row: dict, m: str):
  """(value, std or None, key in metrics.json) of metric m in a metrics.json row."""
  for k in _KEYS.get(m, (m,)):
    if k in row:
      return row[k], row.get(k + "_std"), k
  return None, None, None


def checks(ev1: dict, ev2: dict) -> list[tuple[str, bool, str]]:
  """The benchmark's acceptance checks: (what, passed, the numbers)."""
  t = ev1["teacher"]
  s1, s2 = ev1["student"]["1"], ev2["student"]["2"]
  out = []
  for label, stu, ref_key, tol in (("1-step student within 10% of the teacher at 100 NFE", s1,
                                    "100", 0.10),
                                   ("2-step student within 5% of the teacher at 100 NFE", s2,
                                    "100", 0.05),
                                   ("1-step student at least as good as the teacher at 4 NFE", s1,
                                    "4", 0.0)):
    if ref_key not in t:
      continue
    parts, ok = [], True
    for m in ("swd", "fd", "kid"):
      a, a_std, _ = _metric(stu, m)
      b = _metric(t[ref_key], m)[0]
      if a is None or b is None:
        continue
      # KID is an unbiased estimate that can sit at or below zero: its own std is the tolerance.
      bound = b + tol * abs(b) + ((a_std or 0.0) if m == "kid" else 0.0)
      ok &= a <= bound
      parts.append(f"{m} {a:.4g} vs {b:.4g} (≤ {bound:.4g})")
    out.append((label, ok, "; ".join(parts)))
  top = str(max(int(k) for k in t))
  parts, ok = [], True
  for m, sign in METRICS:
    a, _, _ = _metric(t[top], m)
    b, _, _ = _metric(ev1["input"], m)
    if a is None or b is None:
      continue
    better = (a - b) * sign > 0
    ok &= better
    parts.append(f"{m} {a:.4g} vs {b:.4g}")
  out.append((f"teacher at {top} NFE better than the degraded input on every metric", ok,
              "; ".join(parts)))
  return out


def table(ev1: dict, ev2: dict) -> str:
  """The evaluation report's table (report.format_table) with both students in it."""
  from ibmd_jax import report  # JAX only here, never in the stage runner
  from ibmd_jax.tasks.images import COLUMNS

  ev = dict(ev1, student={"1": ev1["student"]["1"], "2": ev2["student"]["2"]})
  ev.setdefault("groups", ["teacher", "student"])
  ev.setdefault("baselines", {"input": "degraded input", "reference": "reference (itself)"})
  ev.setdefault("labels", {})["student"] = "IBMD student (1- and 2-step generators)"
  return report.format_table(ev, COLUMNS)


def report(args) -> int:
  rec = _load(os.path.join(args.root, "stages.json"), {"done": {}, "calls": []})
  out_dir = os.path.dirname(os.path.abspath(args.report))
  grids = args.grids_dir or os.path.join(out_dir, "results")
  lines = [f"<!-- written by: python bench/bench64.py --root={args.root} --report={args.report}"
           + (f" --grids_dir={args.grids_dir}" if args.grids_dir else "") + " -->"]
  all_ok, missing = True, []
  for task in args.tasks:
    p1 = os.path.join(args.root, task, "1step", "eval", "metrics.json")
    p2 = os.path.join(args.root, task, "2step", "eval", "metrics.json")
    if not (os.path.exists(p1) and os.path.exists(p2)):
      missing.append(task)
      continue
    ev1, ev2 = _load(p1, {}), _load(p2, {})
    secs = {s: rec["done"].get(f"{task}/{s}", {}).get("s") for s in STAGES}
    lines += ["", f"### `{task}`: {TITLES.get(task, task)}", "",
              f"{ev1.get('num_images')} held-out {ev1.get('split')} images of "
              f"{ev1.get('image_size')}², {ev1.get('devices')} × "
              f"{ev1.get('device_kind', 'device')} (JAX {ev1.get('jax', '?')}); stage wall times (s): " +
              ", ".join(f"{s} {v:.0f}" for s, v in secs.items() if v is not None), "",
              table(ev1, ev2), ""]
    for what, ok, nums in checks(ev1, ev2):
      all_ok &= ok
      lines.append(f"- {'✅' if ok else '❌'} {what}: {nums}")
    os.makedirs(grids, exist_ok=True)
    for n, ev, wd in ((1, ev1, "1step"), (2, ev2, "2step")):
      src = os.path.join(args.root, task, wd, "eval", f"grid_student{n}.png")
      if os.path.exists(src):
        dst = os.path.join(grids, f"{task}_grid_student{n}.png")
        shutil.copyfile(src, dst)
        lines.append(f"\n![{task}, {n}-step: input | student | teacher | reference]"
                     f"({os.path.relpath(dst, out_dir)})")
  total = sum(v["s"] for v in rec["done"].values())
  lines += ["", f"Stage time in all: {total:.0f} s ({total / 60:.1f} min) over "
            f"{len(rec['calls'])} calls."]
  if missing:
    lines.append(f"Not evaluated yet: {', '.join(missing)}.")
  with open(args.report, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0 if (all_ok and not missing) else 1


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="benchmark directory (one subdirectory per task)")
  p.add_argument("--tasks", default=",".join(TASKS),
                 help=f"comma-separated, from {','.join(TASKS)}")
  p.add_argument("--budget_s", type=float, default=540.0,
                 help="wall seconds for this call (0: no limit); then exit 75 to be called again")
  p.add_argument("--min_start_s", type=float, default=90.0,
                 help="start a training stage only with this much budget left")
  p.add_argument("--eval_min_s", type=float, default=240.0,
                 help="start an evaluation (not resumable) only with this much budget left")
  p.add_argument("--margin_s", type=float, default=30.0,
                 help="seconds kept for saving and exiting after a training stage's stop")
  p.add_argument("--tiny", action="store_true", help="the CPU-sized variant of every task")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every stage (repeatable), e.g. teacher.steps=400")
  p.add_argument("--report", default="", help="write the tables and checks to this markdown file")
  p.add_argument("--grids_dir", default="", help="where --report copies the grids "
                 "(default: results/ beside the report)")
  args = p.parse_args(argv)
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
