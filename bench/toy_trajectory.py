"""The toy student's distance to the truth along a distillation run, for seed and setting studies.

Runs the launcher's distillation rounds (same problem, initialisation, batches, keys and evaluation
set as `launch.main` with the same config and seed) from a trained teacher, and every --every
rounds evaluates the raw and the EMA generator: E_xT energy distance to the true p(x0 | xT) on the
launcher's held-out conditions. The last EMA value equals the launcher's `student_1step_ed`.

  python bench/toy_trajectory.py --config=configs/toy_cond.py --teacher=runs/toy_cond/teacher \
      --config.seed=1 --config.distill.critic_steps=1 [--every=100] [--out=traj.json]

docs/toy_results.md ("Optimiser settings over seeds") lists the runs made with it.
"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ibmd_jax import evaluate, tasks, toy  # noqa: E402
from ibmd_jax import run as runner  # noqa: E402
from ibmd_jax import sharding as shd  # noqa: E402
from ibmd_jax.tasks.toy import eval_set  # noqa: E402


def trajectory(c, teacher_dir: str, every: int = 100, echo: bool = True) -> list:
  """[{round, raw_ed, ema_ed, seconds}] every `every` rounds of the distillation `c` describes:
  the launcher's own distillation (runner.distill, i.e. api.distill) with an evaluation callback."""
  if c.data.kind != "toy" or not c.conditional:
    raise ValueError("toy_trajectory measures the conditional toy: use configs/toy_cond.py")
  task = tasks.make_task(c)
  c = c.copy_and_resolve_references()
  c.teacher.checkpoint = teacher_dir  # the launcher's loading and fit check, no training
  mesh = shd.mesh_from_config(c)
  teacher = runner.get_teacher(c, "", task, None, mesh, train=False)
  ib = evaluate.make_ibmd(c, task)
  _, truth, _, xT_rep = eval_set(task.gmm, int(c.seed), int(c.eval.num_conditions),
                                 int(c.eval.samples_per_condition))  # the launcher's eval set
  # the evaluator's key for the 1-step student, batch 0
  student_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed + 3), 10_001), 0)

  @jax.jit
  def distance(params):
    out = ib.generate(params, xT_rep, student_key)
    return toy.conditional_energy_distance(out.reshape(truth.shape), truth)

  rows, t0 = [], time.time()
  if echo:
    print("round  raw_ED  ema_ED  seconds", flush=True)

  def measure(step, state):
    row = {"round": step, "raw_ed": float(distance(state.gen)),
           "ema_ed": float(distance(state.gen_ema)), "seconds": time.time() - t0}
    rows.append(row)
    if echo:
      print(f"{row['round']:5d}  {row['raw_ed']:.4f}  {row['ema_ed']:.4f}  "
            f"{row['seconds']:.0f}", flush=True)
    return {"raw_ed": row["raw_ed"], "ema_ed": row["ema_ed"]}

  c.log_every = 10**9
  c.checkpoint.every = 10**9
  with tempfile.TemporaryDirectory() as wd:
    state = runner.distill(c, wd, task, teacher, None, mesh, eval_fn=measure, eval_every=every)
    if not rows or rows[-1]["round"] != int(c.distill.rounds):
      measure(int(c.distill.rounds), state)
  return rows


def main(_):
  fl = flags.FLAGS
  c = fl.config
  try:
    rows = trajectory(c, fl.teacher, fl.every)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(str(e))
  if fl.out:
    with open(fl.out, "w") as f:
      json.dump({"config": c.to_dict(), "trajectory": rows}, f, indent=1, default=str)


if __name__ == "__main__":  # flags only when run as a script: importing it defines none
  config_flags.DEFINE_config_file("config", "configs/toy_cond.py", "A toy config.")
  flags.DEFINE_string("teacher", None, "Teacher directory (<workdir>/teacher of a run).")
  flags.DEFINE_integer("every", 100, "Rounds between evaluations.")
  flags.DEFINE_string("out", "", "Optional JSON file for the trajectory.")
  flags.mark_flag_as_required("teacher")
  app.run(main)
