r"""The handwritten-digits benchmark (issue 38; configs/digits.py) as resumable stages, and its report.

  python bench/digits.py --root=DIR [--tasks=sr4,inpaint,sr4_vp] [--budget_s=0]
  python bench/digits.py --root=DIR --report=docs/results.md
  python bench/digits.py --root=DIR --tasks=sr4 --curve   # the student at every kept checkpoint

Every call runs the stages still to do, in order, until --budget_s is spent (0: no limit); a stage
that is still running then saves its state and the script exits with 75: run the same command
again to continue. The stage runner is bench/bench64.py's (run_stages, <root>/stages.json with
every call and each finished stage's wall time). Stages:

  classifier  <root>/classifier.npz   the judge: a small CNN trained once on the training digits
                                      (ibmd_jax/eval/digits.py); never sees the test digits
  <task>/teacher   <root>/<task>/teacher    bridge matching from scratch (mode=teacher)
  <task>/student   <root>/<task>/student    IBMD from that teacher (mode=distill; inpainting: a
                                            4-step generator trained on the whole chain)
  <task>/nocritic  <root>/<task>/nocritic   the same with the critic term dropped from the
                                            generator loss (distill.critic_weight=0): an ablation
                                            that the checks must fail on
  <task>/eval      <root>/<task>/eval/*.npz every set's restorations of the held-out digits (uint8)
                                            and eval.diversity_samples restorations of
                                            the first eval.diversity_inputs inputs with
                                            other noise (configs/digits.py): the degraded
                                            input, the teacher at every NFE and sampler, the
                                            student, the ablation and the never-updated generator
                                            (the control) at every evaluated step count; one file
                                            per set, so a stopped evaluation resumes

--variant tiny runs the reduced configs (configs/digits.py 'tiny'); --set key=value passes config
overrides to every stage. --report computes every metric from the saved sets with paired
bootstrap intervals (ibmd_jax/eval/digits.py: the classifier's CA and FD on its features, PSNR,
SSIM, diversity), writes the tables and the acceptance checks (a)-(d) between the digits markers
of the given markdown file, and exits 1 when a check fails.

--curve evaluates the checked student (1 step; inpainting 4) at every checkpoint its workdir keeps
(checkpoint.every / checkpoint.keep) into <task>/eval/curve/ (resumable, one file per round); the
report then adds its FD, CA and diversity against distillation rounds, next to the best teacher.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import bench64  # noqa: E402  (no JAX: the stage runner must not import it)

TASKS = ("sr4", "inpaint", "sr4_vp")
STAGES = ("teacher", "student", "nocritic", "eval")
VARIANTS = ("full", "tiny")
TITLES = {"sr4": "4× super-resolution (bicubic), I2SB bridge, unconditional teacher, z input",
          "inpaint": "centre 14×14 inpainting, I2SB bridge, no z, 4-step student (whole chain)",
          "sr4_vp": "4× super-resolution (bicubic), DDBM VP bridge (cov_xy = σ_data²/2), "
                    "conditional on xT, z input"}
# the student each task's checks (c) and (d) judge (the paper's: 1 step; inpainting: 4 steps)
CHECKED_STEPS = {"sr4": 1, "inpaint": 4, "sr4_vp": 1}
BEGIN, END = "<!-- digits:begin -->", "<!-- digits:end -->"


def config_arg(task: str, variant: str) -> str:
  return task + ("" if variant == "full" else "," + variant)


def stage_command(root: str, task: str, stage: str, *, variant: str, sets: list[str],
                  stop_after_s: float) -> tuple[list[str], str]:
  """(argv, workdir) of one stage's call (bench64.run_stages' `command`)."""
  if task == "judge":  # the classifier, once per root
    return ([sys.executable, os.path.abspath(__file__), f"--root={root}", "--classifier",
             f"--variant={variant}"], os.path.join(root, "judge"))
  if stage == "eval":
    argv = [sys.executable, os.path.abspath(__file__), f"--root={root}", f"--eval_task={task}",
            f"--variant={variant}", f"--stop_after_s={stop_after_s:.0f}"]
    return argv + [f"--set={s}" for s in sets], os.path.join(root, task, "eval")
  wd = os.path.join(root, task, stage)
  argv = [sys.executable, "-m", "launch.main",
          f"--config={REPO}/configs/digits.py:{config_arg(task, variant)}", f"--workdir={wd}",
          f"--compilation_cache={os.path.join(root, 'jax_cache')}"]
  argv += [f"--config.{s}" for s in sets]
  if stage == "teacher":
    argv += ["--config.mode=teacher"]
  else:
    argv += [f"--config.teacher.checkpoint={os.path.join(root, task, 'teacher', 'teacher')}",
             "--config.teacher.source=checkpoint", "--config.mode=distill"]
  if stage == "nocritic":  # its critic is never used: one critic step per round saves ~half
    argv += ["--config.distill.critic_weight=0.0", "--config.distill.critic_steps=1"]
  if stop_after_s > 0:
    argv += [f"--config.stop_after_s={stop_after_s:.0f}"]
  return argv, wd


def run_stages(args) -> int:
  """The classifier, then every task's stages (bench64.run_stages with this benchmark's)."""
  tasks = args.tasks
  args.tasks = ["judge"]
  rc = bench64.run_stages(args, stages=("classifier",), command=stage_command, tag="digits")
  args.tasks = tasks
  if rc:
    return rc
  return bench64.run_stages(args, stages=STAGES, command=stage_command, tag="digits")


# ------------------------------------------------------------------------------ evaluation (JAX)


def make_config(task: str, variant: str, sets: list[str]):
  """configs/digits.py for the task with the --set overrides applied."""
  from configs import digits as digits_config  # pylint: disable=g-import-not-at-top
  c = digits_config.get_config(config_arg(task, variant))
  for s in sets:
    key, _, text = s.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _classifier_path(root: str) -> str:
  return os.path.join(root, "classifier.npz")


def train_classifier(args) -> int:
  from configs import digits as digits_config  # pylint: disable=g-import-not-at-top
  from ibmd_jax.eval import digits as digits_eval  # pylint: disable=g-import-not-at-top
  _, meta = digits_eval.load_or_train(_classifier_path(args.root), digits_config.IMAGE_SIZE)
  print(f"[digits] classifier: {meta}", flush=True)
  return 0


# the generators every evaluation draws from, in the order that fixes their sets' seeds
GENERATORS = ("untrained", "student", "nocritic")


def generator_seed(which: str, steps: int) -> int:
  """The key seed of a generator's set at `steps` steps (the curve's student sets use the
  final evaluation's, so its last round reproduces that set)."""
  return 10_000 * (GENERATORS.index(which) + 1) + steps


def checkpoint_rounds(workdir: str) -> list[int]:
  """The rounds of the checkpoints a distillation workdir keeps (their directory names)."""
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def evaluate(args) -> int:
  """Saves every set of one task (see the module docstring); resumable set by set. With
  args.curve: the checked student at every kept checkpoint round instead, into eval/curve/."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ibmd_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from ibmd_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from ibmd_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from ibmd_jax.data import degradations, pipelines  # pylint: disable=g-import-not-at-top
  from ibmd_jax.samplers import sample  # pylint: disable=g-import-not-at-top
  from ibmd_jax.tasks import make_task  # pylint: disable=g-import-not-at-top

  t_start = time.time()
  task_name = args.eval_task
  out_dir = os.path.join(args.root, task_name, "eval")
  os.makedirs(out_dir, exist_ok=True)
  c = make_config(task_name, args.variant, args.set)
  c.teacher.checkpoint = os.path.join(args.root, task_name, "teacher", "teacher")
  c.teacher.source = "checkpoint"
  task = make_task(c)
  mesh = shd.mesh_from_config(c)
  teacher = run_lib.get_teacher(c, out_dir, task, None, mesh, train=False)
  n = int(c.eval.num_images)
  ev = pipelines.load_eval_set(dict(c.data, class_conditional=True), n, int(c.seed))
  # a fixed shuffle: the diversity subset (the first inputs) then holds every class
  order = np.random.default_rng(0).permutation(n)
  ev = {k: v[order] for k, v in ev.items()}
  ref_path = os.path.join(out_dir, "reference.npz")
  if not os.path.exists(ref_path):
    np.savez(ref_path, images=degradations.to_uint8(ev["x0"]), label=ev["label"],
             input=degradations.to_uint8(np.clip(ev["xT"], -1, 1)))
  bs = int(c.eval.batch_size)
  m = min(int(c.eval.diversity_inputs), n)
  k_div = int(c.eval.diversity_samples)
  mask = ev.get("mask")

  def put(x):
    return jax.device_put(x, shd.state_shardings(mesh, x))

  set_dir = os.path.join(out_dir, "curve") if args.curve else out_dir
  os.makedirs(set_dir, exist_ok=True)

  def run_set(name: str, fn, params, seed: int):
    path = os.path.join(set_dir, name.replace("/", "_") + ".npz")
    if os.path.exists(path):
      return True
    if args.stop_after_s > 0 and time.time() - t_start > args.stop_after_s:
      return False
    jfn = jax.jit(fn)
    key = jax.random.key(seed)

    def draw(rep: int, count: int):
      outs, secs = [], []
      for j in range(0, count, bs):
        hi = min(j + bs, count)
        xT = ev["xT"][j:hi]
        mk = None if mask is None else mask[j:hi]
        kb = jax.random.fold_in(jax.random.fold_in(key, rep), j)
        t0 = time.perf_counter()
        outs.append(np.asarray(jax.block_until_ready(jfn(params, xT, mk, kb))))
        secs.append((time.perf_counter() - t0) / len(xT))
      return np.concatenate(outs), secs

    draw(0, min(bs, n))  # compile outside the timing
    images, secs = draw(0, n)
    samples = [images[:m]] + [draw(r, m)[0] for r in range(1, k_div)]
    np.savez(path + ".tmp.npz", images=degradations.to_uint8(images),
             samples=degradations.to_uint8(np.stack(samples)),
             s_per_image=float(np.median(secs)))
    os.replace(path + ".tmp.npz", path)
    print(f"[digits] {task_name}/{name}: {len(images)} images, {np.median(secs) * 1e3:.2f} ms "
          f"per image", flush=True)
    return True

  sets = []  # (name, fn(params, xT, mask, key), params, seed)
  if args.curve:
    return _evaluate_curve(args, c, task, teacher, mesh, set_dir, put, run_set)
  t_params = put(teacher)
  for i, eta in enumerate(evaluate_lib.teacher_etas(c.eval, float(c.sampler.eta))):
    group = "teacher" if i == 0 else f"teacher_eta{eta:g}"
    for nfe in (int(v) for v in c.eval.teacher_nfes):
      def t_fn(p, xT, mk, k, nfe=nfe, eta=eta):
        return sample(task.net, p, task.bridge, xT, k, nfe, eta=eta, mask=mk)
      sets.append((f"{group}/{nfe}", t_fn, t_params, 1000 * i + nfe))
  ib = evaluate_lib.make_ibmd(c, task)
  gens = [("untrained", lambda: run_lib.init_distill_state(c, task, teacher, mesh)[0].gen_ema)]
  for which in GENERATORS[1:]:  # the distilled ones, from their workdirs
    wd = os.path.join(args.root, task_name, which)
    gens.append((which, lambda wd=wd: run_lib.saved_generator(c, wd, task, teacher, mesh)))
  for which, load in gens:
    todo = [s for s in (int(v) for v in c.eval.student_steps)
            if not os.path.exists(os.path.join(out_dir, f"{which}_{s}.npz"))]
    if not todo:
      continue
    params = load()
    if params is None:
      print(f"[digits] {task_name}/{which}: no distillation checkpoint in "
            f"{args.root}/{task_name}/{which}: run its stage first", file=sys.stderr, flush=True)
      return 1
    params = put(params)
    for s in todo:
      def g_fn(p, xT, mk, k, s=s):
        return ib.generate(p, xT, k, mask=mk, n_steps=s)
      sets.append((f"{which}/{s}", g_fn, params, generator_seed(which, s)))
  for name, fn, params, seed in sets:
    if not run_set(name, fn, params, seed):
      print(f"[digits] {task_name}/eval: time is up after {time.time() - t_start:.0f} s; run "
            "again to continue", flush=True)
      return bench64.EXIT_RESUME
  return 0


def _evaluate_curve(args, c, task, teacher, mesh, set_dir, put, run_set) -> int:
  from ibmd_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from ibmd_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  wd = os.path.join(args.root, args.eval_task, "student")
  steps = CHECKED_STEPS[args.eval_task]
  kept = checkpoint_rounds(wd)
  if not kept:
    print(f"[digits] {args.eval_task}/curve: no checkpoints in {wd}/checkpoints: run the "
          "student stage first", file=sys.stderr, flush=True)
    return 1
  ib = evaluate_lib.make_ibmd(c, task)

  def g_fn(p, xT, mk, k):
    return ib.generate(p, xT, k, mask=mk, n_steps=steps)

  for r in kept:
    if os.path.exists(os.path.join(set_dir, f"student@{r}_{steps}.npz")):
      continue
    params = put(run_lib.saved_generator(c, wd, task, teacher, mesh, step=r))
    # the seed of the final evaluation's student set: the last round's file is that set again
    if not run_set(f"student@{r}/{steps}", g_fn, params, generator_seed("student", steps)):
      print(f"[digits] {args.eval_task}/curve: time is up; run again to continue", flush=True)
      return bench64.EXIT_RESUME
  return 0


def run_curve(args) -> int:
  """--curve: every task's curve evaluation (in this process, one task after another)."""
  for task in args.tasks:
    args.eval_task = task
    rc = evaluate(args)
    if rc:
      return rc
  return 0


# ------------------------------------------------------------------------------ report


def load_sets(root: str, task: str) -> tuple[dict, dict]:
  """(reference {'images', 'label', 'input'}, {name: {'images', 'samples', 's_per_image'}})."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  d = os.path.join(root, task, "eval")
  ref_path = os.path.join(d, "reference.npz")
  if not os.path.exists(ref_path):
    raise FileNotFoundError(ref_path)
  with np.load(ref_path) as z:
    ref = {k: z[k] for k in z.files}
  sets = {}
  for f in sorted(os.listdir(d)):
    if f.endswith(".npz") and f != "reference.npz" and ".tmp" not in f:
      group, _, count = f[:-4].rpartition("_")
      with np.load(os.path.join(d, f)) as z:
        sets[f"{group}/{count}"] = {k: z[k] for k in z.files}
  return ref, sets


def load_curve(root: str, task: str) -> dict:
  """{round: set} of --curve's files in <task>/eval/curve (empty when it has not run)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  d = os.path.join(root, task, "eval", "curve")
  out = {}
  for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if f.startswith("student@") and f.endswith(".npz") and ".tmp" not in f:
      with np.load(os.path.join(d, f)) as z:
        out[int(f[len("student@"):].split("_")[0])] = {k: z[k] for k in z.files}
  return dict(sorted(out.items()))


def curve_lines(ref: dict, curve: dict, best: str, best_set: dict, params, reps: int) -> list:
  """A markdown table: FD, CA and diversity of the student against rounds, and FD − 1.10 × the
  best teacher's (check (c)'s margin), each with its paired bootstrap interval."""
  sets = {best: best_set, **{f"round {r}": s for r, s in curve.items()}}
  b, rows = analyse(ref, sets, params, reps)
  out = ["| rounds | FD | CA | diversity | FD − 1.10·FD_best |", "|---|---|---|---|---|",
         f"| {best} (best teacher) | {_fmt(rows[best]['fd'])} | {_fmt(rows[best]['ca'])} | "
         f"{_fmt(rows[best]['diversity'])} | – |"]
  for r in curve:
    n = f"round {r}"
    _, d = b.better(n, best, "fd", 1.10)
    out.append(f"| {r} | {_fmt(rows[n]['fd'])} | {_fmt(rows[n]['ca'])} | "
               f"{_fmt(rows[n]['diversity'])} | {_fmt(d)} |")
  return out


def analyse(ref: dict, sets: dict, params, reps: int):
  """(DigitScores, {name: summary}) for the degraded input and every set."""
  from ibmd_jax.data.digits import as_float  # pylint: disable=g-import-not-at-top
  from ibmd_jax.eval import digits as digits_eval  # pylint: disable=g-import-not-at-top
  b = digits_eval.DigitScores(as_float(ref["images"]), ref["label"], params, reps=reps)
  rows = {"input": b.add("input", as_float(ref["input"]))}
  for name, s in sets.items():
    rows[name] = b.add(name, as_float(s["images"]), samples=as_float(s["samples"]))
  return b, rows


def _fmt(d: dict) -> str:
  return f"{d['value']:.4g} [{d['lo']:.4g}, {d['hi']:.4g}]"


def student_checks(b, student: str, best: str) -> list[tuple[str, bool, str]]:
  """Check (c) for one generator against the best teacher."""
  out = []
  ok, d = b.better(student, best, "fd", 1.10)
  out.append((f"FD({student}) ≤ 1.10 × FD({best})", ok, f"FD − 1.10·FD_best = {_fmt(d)}"))
  ok, d = b.better(student, best, "ca", 1.0, -0.02)
  out.append((f"CA({student}) ≥ CA({best}) − 0.02", ok, f"CA − CA_best + 0.02 = {_fmt(d)}"))
  if "diversity" in b.reps_of[student] and "diversity" in b.reps_of[best]:
    ok, d = b.better(student, best, "diversity", 0.8)
    out.append((f"diversity({student}) ≥ 0.8 × diversity({best})", ok,
                f"div − 0.8·div_best = {_fmt(d)}"))
  return out


def checks(task: str, b, rows: dict) -> list[tuple[str, str, bool, str]]:
  """[(letter, what, passed, numbers)] of the issue's acceptance checks (a)-(d)."""
  teachers = [n for n in rows if n.startswith("teacher")]
  best = min(teachers, key=lambda n: rows[n]["fd"]["value"])
  out = []
  for metric in ("fd", "ca"):
    ok, d = b.better(best, "input", metric)
    out.append(("a", f"best teacher {best} beats the degraded input on {metric.upper()}", ok,
                f"{metric}({best}) − {metric}(input) = {_fmt(d)}"))
  first = best.split("/")[0] + "/1"
  if best == first:
    out.append(("b", f"sampling helps: the best teacher is {best} itself", False, "–"))
  else:
    ok, d = b.better(best, first, "fd")
    out.append(("b", f"sampling helps: {best} beats {first} on FD", ok, f"difference {_fmt(d)}"))
  steps = CHECKED_STEPS[task]
  student = f"student/{steps}"
  if student in rows:
    out += [("c", w, ok, nums) for w, ok, nums in student_checks(b, student, best)]
  else:
    out.append(("c", f"{student} evaluated", False, "missing"))
  for control, what in ((f"untrained/{steps}", "the never-updated generator"),
                        (f"nocritic/{steps}", "the student distilled without the critic term")):
    if control not in rows:
      out.append(("d", f"the checks of (c) fail for {what}", False, f"{control} missing"))
      continue
    res = student_checks(b, control, best)
    failed = [r for r in res if not r[1]]
    out.append(("d", f"the checks of (c) fail for {what} ({control})", bool(failed),
                f"{len(failed)} of {len(res)} fail: " + "; ".join(
                    f"{'✅' if ok else '❌'} {w}: {n}" for w, ok, n in res)))
  return out


def table(rows: dict, sets: dict) -> str:
  """The metrics table (ibmd_jax.eval.digits.table: shared with the notebook and the demo)."""
  from ibmd_jax.eval import digits as digits_eval  # pylint: disable=g-import-not-at-top
  return digits_eval.table(rows, sets)


def report(args) -> int:
  from bench import bench_report  # pylint: disable=g-import-not-at-top
  from configs import digits as digits_config  # pylint: disable=g-import-not-at-top
  from ibmd_jax.eval import digits as digits_eval  # pylint: disable=g-import-not-at-top
  rec = bench64._load(os.path.join(args.root, "stages.json"), {"done": {}, "calls": []})
  params, cmeta = digits_eval.load_or_train(_classifier_path(args.root), digits_config.IMAGE_SIZE)
  lines = [f"<!-- written by: {' '.join(sys.argv)} -->", "",
           f"Judge: a digit classifier trained once on the 4,000 training digits "
           f"({cmeta['steps']} Adam steps), {cmeta['test_accuracy']:.3f} accuracy on the 1,000 "
           f"clean test digits. Every value [paired bootstrap 95 % interval, {args.reps} "
           f"replicates]; diversity: per input, the std over K restorations with other noise "
           f"(K and the inputs: eval.diversity_samples / diversity_inputs, in each table's "
           f"header); variant {rec.get('variant', args.variant)}, overrides "
           f"{rec.get('sets', args.set) or 'none'}."]
  all_ok, missing, summary = True, [], {}
  for task in args.tasks:
    try:
      ref, sets = load_sets(args.root, task)
    except FileNotFoundError as e:
      missing.append(f"{task} ({e})")
      continue
    b, rows = analyse(ref, sets, params, args.reps)
    secs = {s: rec["done"].get(f"{task}/{s}", {}).get("s") for s in STAGES}
    lines += ["", f"### digits `{task}`: {TITLES[task]}", "",
              f"{len(ref['images'])} held-out digits; diversity over "
              f"{next(iter(sets.values()))['samples'].shape[0]} restorations of the first "
              f"{next(iter(sets.values()))['samples'].shape[1]}; stage wall times (s): " + ", ".join(
                  f"{s} {v:.0f}" for s, v in secs.items() if v is not None), "",
              table(rows, sets), ""]
    res = checks(task, b, rows)
    more, ok = bench_report.check_lines(res)
    lines += more
    curve = load_curve(args.root, task)
    if curve:
      best = min((n for n in rows if n.startswith("teacher")), key=lambda n: rows[n]["fd"]["value"])
      lines += ["", f"The {CHECKED_STEPS[task]}-step student against distillation rounds "
                f"(`--curve`: every kept checkpoint; the same held-out digits and seeds):", "",
                *curve_lines(ref, curve, best, sets[best], params, args.reps)]
    all_ok &= ok
    summary[task] = bench_report.task_summary(rows, res, secs)
  lines += bench_report.closing_lines(rec, missing)
  text = "\n".join(lines)
  if args.report != "-":
    if os.path.exists(args.report):
      with open(args.report) as f:
        doc = f.read()
      if BEGIN not in doc or END not in doc:  # never replace a document without the markers
        with open(args.report, "a") as f:
          f.write(f"\n{BEGIN}\n{END}\n")
    bench_report._write_between_markers(args.report, text, BEGIN, END)
  with open(os.path.join(args.root, "report.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(text)
  return 0 if (all_ok and not missing) else 1


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="benchmark directory (one subdirectory per task)")
  p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {TASKS}")
  bench64.add_stage_args(p, budget_s=0.0, min_start_s=60.0, eval_min_s=60.0, margin_s=20.0)
  p.add_argument("--variant", default="full", choices=VARIANTS,
                 help="full: the benchmark (configs/digits.py); tiny: the reduced test run")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every stage (repeatable), e.g. distill.rounds=100")
  p.add_argument("--reps", type=int, default=200, help="bootstrap replicates of the report")
  p.add_argument("--report", default="", help="write the tables and checks to this markdown "
                 "file between the digits markers ('-': print only)")
  # the stages' own entry points (called by the stage runner)
  p.add_argument("--curve", action="store_true", help="evaluate the checked student at every "
                 "checkpoint its workdir keeps (the report then shows FD/CA/diversity against "
                 "rounds)")
  p.add_argument("--classifier", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--eval_task", default="", help=argparse.SUPPRESS)
  p.add_argument("--stop_after_s", type=float, default=0.0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.tasks = [t for t in args.tasks.split(",") if t]
  bad = [t for t in args.tasks if t not in TASKS]
  if bad:
    p.error(f"unknown task(s) {bad}; choose from {list(TASKS)}")
  bad = [s for s in args.set if "=" not in s or s.startswith("--")]
  if bad:
    p.error(f"--set takes KEY=VALUE without --config., got {bad}")
  if args.classifier:
    return train_classifier(args)
  if args.eval_task:
    return evaluate(args)
  if args.curve:
    return run_curve(args)
  return report(args) if args.report else run_stages(args)


if __name__ == "__main__":
  sys.exit(main())
