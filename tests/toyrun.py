"""ONE tiny toy setup for the tests that run the toy pipeline (faults, launch, gcs workdir, stages,
checkpoint), in-process (`config`) and through the launcher (`launcher_args`).

These tests' time is compiling (XLA) the same few programs (teacher step, IBMD round, critic
init, eval samplers), not running them. With every shape-, schedule- and sampler-setting the same
here, each program compiles once per pytest session and every later run, in-process or in a
launcher subprocess with the suite's XLA_FLAGS and one device (mesh.data=1), loads it from the
session's persistent cache (tests/conftest.py). A test changes only what leaves the programs as
they are (steps, rounds, save/log cadence, workdir, mode) or what it tests; a change of width,
batch, critic_steps, learning-rate schedule or eval sampler compiles a new program.

The learning rates are constant: a cosine schedule bakes the run's length into the compiled
program (and a run to 6 rounds continued to 8 is then the run to 8).
"""
import atexit
import os
import shutil
import tempfile

from configs import toy_cond

# dotted key -> value; in-process via config(), in the launcher via launcher_args()
SHRINK = {
    "model.width": 32,  # (width 32: a distillation checkpoint's arrays are ~250 KiB, which
                        # test_faults' full-disk test needs to be more than 64 KiB)
    "teacher.steps": 20,
    "teacher.batch_size": 64,
    "distill.rounds": 8,
    "distill.batch_size": 16,
    "distill.critic_steps": 2,
    "distill.gen_optimizer.decay": "constant",
    "distill.critic_optimizer.decay": "constant",
    "checkpoint.every": 2,
    "log_every": 1,
    # eval (pipeline mode): enough samples that the exact teacher's 4-NFE ED is below its 1-NFE
    # one (test_launch)
    "eval.teacher_nfes": (1, 4),
    "eval.student_steps": (1,),
    "eval.num_conditions": 4,
    "eval.samples_per_condition": 40,
    "mesh.data": 1,  # one of the suite's 8 fake CPU devices (the first: sharding.make_mesh)
}


def config(mode="pipeline", module=toy_cond, **over):
  """The shared tiny config of `module` (toy_cond / toy_uncond); `over`: dotted keys, e.g.
  config("distill", **{"distill.rounds": 6})."""
  c = module.get_config()
  c.update_from_flattened_dict(dict(SHRINK))
  c.mode = mode
  c.update_from_flattened_dict(dict(over))
  return c


def _flag(value) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def launcher_args(**over) -> list:
  """--config.<key>=<value> for the launcher: the same programs as config() (the keys of `over`
  replace SHRINK's), and the session's compilation cache."""
  items = dict(SHRINK, **over)
  return [f"--config.{k}={_flag(v)}" for k, v in items.items()] + [
      f"--compilation_cache={os.environ['IBMD_TEST_JAX_CACHE']}"]


_TEACHER = {}


def teacher_dir() -> str:
  """A teacher trained once per test process by a teacher-mode run of config() (its `teacher`
  directory); copy it into a workdir (copy_teacher), never write into it."""
  if "dir" not in _TEACHER:
    from ibmd_jax import run as runner

    root = tempfile.mkdtemp(prefix="ibmd_toy_teacher_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    runner.run(config("teacher"), root)
    _TEACHER["dir"] = os.path.join(root, "teacher")
  return _TEACHER["dir"]


def copy_teacher(workdir: str) -> str:
  """workdir with the shared teacher in it (distill mode uses it, pipeline mode trains no other)."""
  shutil.copytree(teacher_dir(), os.path.join(workdir, "teacher"))
  return workdir


# ------------------------------------------------------------------ launcher command lines
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One Python process imports what every launcher run imports (absl, ml_collections, JAX, the
# package: 3-4 CPU-s, most of a failing launcher's cost) and forks one child per command line. A
# child is the launcher from its flag parsing on (launch.main.run_cli with sys.argv set): its own
# pid, JAX backend, stdout/stderr files, cwd and exit code (sys.exit and an uncaught exception end
# it as they end `python -m launch.main`). The parent never starts a JAX backend (nothing to fork
# that holds threads).
_DRIVER = r"""
import json, os, sys
cases, out = json.load(open(sys.argv[1])), sys.argv[2]
import jax, launch.main, ibmd_jax.run  # noqa: E401,F401  (no backend started)
codes = []
for case in cases:
  sys.stdout.flush(); sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
      f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(f, fd)
      os.close(f)
    os.chdir(case["cwd"])
    if case["fsize"]:
      import resource
      resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], case["fsize"]))
    sys.argv = [os.path.join(launch.main.__file__), *case["args"]]
    launch.main.run_cli()
    sys.exit(0)
  codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
json.dump(codes, open(out, "w"))
"""


def launch_all(cases: list, timeout: int = 600) -> list:
  """Runs several `python -m launch.main <args>` command lines in one subprocess (see _DRIVER).
  cases: dicts with "args" (launcher arguments) and optionally "cwd" (default: the repository) and
  "fsize" (RLIMIT_FSIZE in bytes). Returns one subprocess.CompletedProcess per case (returncode,
  stdout, stderr), in order."""
  import json
  import subprocess
  import sys

  tmp = tempfile.mkdtemp(prefix="ibmd_launch_all_")
  try:
    spec = [{"args": list(c["args"]), "cwd": c.get("cwd", REPO), "fsize": c.get("fsize", 0),
             "stdout": os.path.join(tmp, f"{i}.out"), "stderr": os.path.join(tmp, f"{i}.err")}
            for i, c in enumerate(cases)]
    with open(os.path.join(tmp, "cases.json"), "w") as f:
      json.dump(spec, f)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _DRIVER, os.path.join(tmp, "cases.json"),
                        os.path.join(tmp, "codes.json")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    with open(os.path.join(tmp, "codes.json")) as f:
      codes = json.load(f)
    out = []
    for c, s, code in zip(cases, spec, codes):
      with open(s["stdout"], errors="replace") as fo, open(s["stderr"], errors="replace") as fe:
        out.append(subprocess.CompletedProcess(c["args"], code, fo.read(), fe.read()))
    return out
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
