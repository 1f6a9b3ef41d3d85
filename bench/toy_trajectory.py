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
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ibmd_jax import ibmd as ibmd_lib  # noqa: E402
from ibmd_jax import toy, train  # noqa: E402

def trajectory(c, teacher_dir: str, every: int = 100, echo: bool = True) -> list:
  """[{round, raw_ed, ema_ed, seconds}] every `every` rounds of the distillation `c` describes."""
  if c.data.kind != "toy" or not c.conditional:
    raise ValueError("toy_trajectory measures the conditional toy: use configs/toy_cond.py")
  problem = train.make_problem(c)
  c = c.copy_and_resolve_references()
  c.teacher.checkpoint = teacher_dir  # the launcher's loading and fit check, no training
  teacher = train.get_teacher(c, "", problem, writer=None, train=False)
  ib = train.make_ibmd(c, problem)
  state, gen_tx, critic_tx = train.init_distill_state(c, problem, teacher)
  _, _, round_step = ibmd_lib.make_steps(ib, gen_tx, critic_tx, float(c.distill.ema))
  round_step = jax.jit(round_step)

  _, truth, xT_rep = train.toy_eval_set(c, problem.gmm)  # the launcher's evaluation set
  student_key = jax.random.fold_in(jax.random.key(c.seed + 3), 101)  # evaluate_toy's, 1 step

  @jax.jit
  def distance(params):
    out = ib.generate(params, xT_rep, student_key)
    return toy.conditional_energy_distance(out.reshape(truth.shape), truth)

  round_key = jax.random.key(c.seed + 2)
  n_batch, bs = int(c.distill.critic_steps) + 1, int(c.distill.batch_size)
  rows, t0 = [], time.time()
  if echo:
    print("round  raw_ED  ema_ED  seconds", flush=True)
  for r in range(int(c.distill.rounds)):
    batch = {"xT": jnp.asarray(problem.distill_batches(r, n_batch, bs)["xT"])}
    state, _ = round_step(state, teacher, batch, jax.random.fold_in(round_key, r))
    if (r + 1) % every == 0 or r + 1 == int(c.distill.rounds):
      row = {"round": r + 1, "raw_ed": float(distance(state.gen)),
             "ema_ed": float(distance(state.gen_ema)), "seconds": time.time() - t0}
      rows.append(row)
      if echo:
        print(f"{row['round']:5d}  {row['raw_ed']:.4f}  {row['ema_ed']:.4f}  "
              f"{row['seconds']:.0f}", flush=True)
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
