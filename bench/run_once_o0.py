r"""Compile and run CPU-seconds of run-once programs at XLA:CPU's default LLVM -O2 and at -O0.

  python bench/run_once_o0.py            # both settings, each in a fresh process, no cache

The library compiles state initialisation (ibmd_jax/state.py, `run_once_options`) and the toy's
data samplers (ibmd_jax/tasks/toy.py) at -O0 on the CPU; this measures why: the digits tiny
UNet's teacher-state init and the toy's two samplers, compile and run time per setting.
"""
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(setting: str) -> None:
  import jax
  import jax.numpy as jnp
  from configs import digits
  from ibmd_jax import sharding as shd
  from ibmd_jax import state as st
  from ibmd_jax import tasks, toy
  from ibmd_jax.optim import make_optimizer
  opts = dict(st.CPU_FAST_COMPILE) if setting == "O0" else None

  def timed(name, fn, args, static=()):
    t0 = time.process_time()
    lowered = jax.jit(fn, static_argnums=static).lower(*args)
    t1 = time.process_time()
    compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
    t2 = time.process_time()
    dyn = [a for i, a in enumerate(args) if i not in static]
    jax.block_until_ready(compiled(*dyn))
    t3 = time.process_time()
    print(f"| {setting} | {name} | {t2 - t1:.2f} | {(t3 - t2) * 1e3:.1f} |", flush=True)

  c = digits.get_config("sr4,tiny")
  task = tasks.make_task(c)
  mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
  planned = st.teacher_state(task.net, task.example(), make_optimizer({}), jax.random.key(0), mesh)
  # the Planned init's own function, compiled here with the setting under test
  timed("digits tiny UNet teacher-state init", planned._fn.__wrapped__, planned._args)
  g = toy.make_coupling("cond_modes")
  timed("toy sample_x0_given_xT (16 x 200)", g.sample_x0_given_xT,
        (jax.random.key(0), jnp.zeros((16, 2)), 200), static=(2,))
  timed("toy sample (batch 256)", g.sample, (jax.random.key(0), 256), static=(1,))


def main() -> int:
  if len(sys.argv) > 1:
    measure(sys.argv[1])
    return 0
  print("| setting | program | compile CPU-s | first run ms |\n|---|---|---|---|", flush=True)
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false", JAX_PLATFORMS="cpu")
  for setting in ("O2", "O0"):
    subprocess.run([sys.executable, os.path.abspath(__file__), setting], cwd=REPO, env=env,
                   check=True)
  return 0


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  sys.exit(main())
