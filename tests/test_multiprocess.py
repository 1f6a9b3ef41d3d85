"""The pod path run for real: several JAX processes of the launcher on this machine (issue 37).

`launch.local_pod` starts N processes of `python -m launch.main --config.distributed=True`, each
with its own CPU devices, gloo collectives and one shared workdir. The tests compare them with a
1-process launcher run on 8 devices (the same command and XLA flags), from the data each process
fed (IBMD_JAX_DATA_LOG: a hash per row per step, ibmd_jax/data_log.py) and from the metrics, and
break them the ways a pod breaks: SIGTERM to every process (maintenance), kill -9 of one process
(a host dies), a restart with another process count.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import toy_cond
from ibmd_jax import data_log
from launch import local_pod

# The default-suite pod run: the toy pipeline (teacher, IBMD distillation, evaluation), as small as
# keeps every check meaningful. Its cost is per process start (imports, ~5 CPU-s, and compiling
# every program again: JAX's persistent cache never serves process 1 on CPU, docs/multihost.md),
# so the test starts 3 pods, not 4, the network is one hidden layer (a third less to compile than
# 3), the evaluation is the student's alone, and checkpoints are the ones the faults need: step 1
# (Orbax's first), the SIGTERM step and the ends.
# Teacher steps and distillation rounds: a step costs 0.1-0.5 s, a compile tens of seconds; these
# leave room to kill or signal mid-loop on a fast machine (the kill comes after the first
# checkpoint, at step >= 2; SIGTERM after round 2).
STEPS, ROUNDS = 16, 12
TOY = {"mode": "pipeline", "model.width": 16, "model.depth": 1, "teacher.steps": STEPS,
       "teacher.batch_size": 64, "teacher.save_every": 0, "distill.rounds": ROUNDS,
       "distill.batch_size": 16, "distill.critic_steps": 1, "checkpoint.every": 100,
       "log_every": 1, "eval.teachers": (), "eval.teacher_nfes": (1,), "eval.student_steps": (1,),
       "eval.batch_size": 16, "eval.num_conditions": 2, "eval.samples_per_condition": 8}
TEACHER = dict(TOY, mode="teacher")  # the same teacher run alone
# metrics compared with the 1-process run: every number of a row but the timings
TIMING = ("steps_per_s", "gen_samples_per_s", "eta_s", "eval_seconds")
RTOL, ATOL = 2e-5, 1e-6
# How a process sees another of its run die (kill -9), docs/multihost.md: the launcher's line (a
# collective failed: exit 69); JAX's coordination service after the heartbeat timeout (SIGABRT);
# gloo's own abort when the peer died in the middle of a message (SIGABRT, from a gloo thread:
# nothing in Python can catch it)
PEER_LOST = ("lost contact with another process of this run",
             "Terminating process because the JAX distributed service detected fatal errors",
             "Received data size doesn't match expected size")


def _args(over: dict, workdir: str) -> list:
  out = ["--config=configs/toy_cond.py", f"--workdir={workdir}"]
  for k, v in over.items():
    out.append(f"--config.{k}={v}")
  return out


def _toy_config(over: dict):
  c = toy_cond.get_config()
  c.update_from_flattened_dict(dict(over))  # dotted keys
  return c


def _rows(workdir, mode="teacher"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["mode"] == mode]


def _losses(workdir, mode="teacher", keys=("loss", "grad_norm")):
  return {r["step"]: [r[k] for k in keys] for r in _rows(workdir, mode)}


def _numbers(row) -> dict:
  return {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in TIMING
          and "per_s" not in k and "per_sample" not in k and k != "step"}


def _data(prefix, process, loop="teacher") -> dict:
  """{step: row hashes} a process fed; a step fed again after a restart: the later feed."""
  out = {}
  with open(f"{prefix}.p{process}.jsonl") as f:
    for line in f:
      r = json.loads(line)
      if r["loop"] == loop:
        out[r["step"]] = r["rows"]
  return out


def _steps(workdir, sub="teacher_checkpoints"):
  d = os.path.join(workdir, sub)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


# XLA's CPU backend at LLVM -O0: these programs compile in about half the CPU time (the pod tests'
# main cost, paid again by every process at every start) and run fast enough. The 1-process
# reference is a launcher process with the same flags, so both sides run the same code (the suite
# sets it too, tests/conftest.py; added here if absent).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def _env(data_prefix=None) -> dict:
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").split()
  env["XLA_FLAGS"] = " ".join(flags + ([] if FAST_COMPILE in flags else [FAST_COMPILE]))
  env.pop(data_log.ENV, None)
  if data_prefix:
    env[data_log.ENV] = data_prefix
  return env


class _Reference:
  """The 1-process 8-device launcher run of TOY, started in the background (it runs while the pod
  of the first test starts and waits: the 2 cores are idle in a pod's barriers and timeouts);
  `get()` waits for it and returns (workdir, data log prefix)."""

  def __init__(self, root, args=None):
    self.prefix, self.workdir = str(root / "data"), str(root / "run")
    self.log = open(root / "log.txt", "w+")
    self.started = time.time()
    args = _args(TOY, self.workdir) if args is None else [*args, f"--workdir={self.workdir}"]
    self.proc = subprocess.Popen(
        # compiled as the pods compile: nothing cached (--compilation_cache=off also overrides a
        # JAX_COMPILATION_CACHE_DIR of the environment, ibmd_jax/compile_cache.py)
        [sys.executable, "-m", "launch.main", *args, "--compilation_cache=off"],
        cwd=local_pod.REPO,
        env=local_pod.process_env(8, _env(self.prefix)), stdout=self.log,
        stderr=subprocess.STDOUT)
    self.took = None


  def get(self):
    if self.took is None:
      code = self.proc.wait(timeout=600)
      self.took = os.path.getmtime(self.log.name) - self.started  # its last line
      self.log.seek(0)
      assert code == 0, self.log.read()[-3000:]
      print(f"1-process reference run: {self.took:.1f} s (alongside the first test)")
    return self.workdir, self.prefix

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.log.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  ref = _Reference(tmp_path_factory.mktemp("reference"))
  yield ref
  ref.close()


def _pod(tmp_path, name, over, n=2, devices=4, env_prefix=None):
  return local_pod.start(n, devices, _args(over, str(tmp_path / "run")),
                         log_dir=str(tmp_path / name), env=_env(env_prefix))


def _wait_until(ready, pod, what, timeout=300):
  end = time.time() + timeout
  while time.time() < end:
    if any(p.poll() is not None for p in pod.procs):
      raise AssertionError(f"a process ended before {what}: {[p.poll() for p in pod.procs]}\n"
                           + pod.output(0)[-3000:])
    if ready():
      return
    time.sleep(0.05)
  raise AssertionError(f"{what}: not reached in {timeout} s\n" + pod.output(0)[-3000:])


def _logged(workdir, mode, step):
  """Whether metrics.jsonl has a `mode` row at `step` or later."""
  try:
    return any(r["step"] >= step for r in _rows(workdir, mode))
  except (OSError, ValueError):  # not there yet, or a line being written
    return False


def _compare(name, got: dict, ref: dict):
  """got, ref: {step: {key: value}} of one mode; the same steps and keys, values to RTOL/ATOL.
  Returns (max abs diff, max rel diff, how many values)."""
  return _compare_tol(name, got, ref, RTOL, ATOL)


def _compare_tol(name, got: dict, ref: dict, rtol: float, atol: float):
  assert sorted(got) == sorted(ref) and got, (name, sorted(got), sorted(ref))
  a, b = [], []
  for step in sorted(ref):
    assert sorted(got[step]) == sorted(ref[step]), (name, step)
    a += [got[step][k] for k in sorted(ref[step])]
    b += [ref[step][k] for k in sorted(ref[step])]
  a, b = np.array(a, np.float64), np.array(b, np.float64)
  diff = np.abs(a - b)
  rel = diff / np.maximum(np.abs(b), 1e-30)
  print(f"{name}: {a.size} values, max |diff| {diff.max():.3g}, max rel {rel.max():.3g}")
  np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
  return diff.max(), rel.max(), a.size


def _check_against_reference(workdir, prefix, reference, n=2, modes=("teacher", "distill",
                                                                       "eval")):
  """The metrics of `modes` (every number of every row but timings) equal the 1-process run's,
  and at every teacher step and distillation round process p fed rows [p*b, (p+1)*b) of the
  1-process run's batch: no example read twice or skipped, each restart went on exactly."""
  ref_dir, ref_prefix = reference.get()
  for mode in modes:
    ref = {r["step"]: _numbers(r) for r in _rows(ref_dir, mode)}
    got = {r["step"]: _numbers(r) for r in _rows(workdir, mode)}
    _compare(f"{n} vs 1 process, {mode}", got, ref)
    if mode == "eval":
      continue
    ref_rows = _data(ref_prefix, 0, mode)
    fed = [_data(prefix, p, mode) for p in range(n)]
    assert sorted(ref_rows) == list(range(1, (STEPS if mode == "teacher" else ROUNDS) + 1))
    for step in sorted(ref_rows):
      parts = [f[step] for f in fed]
      assert sum(parts, []) == ref_rows[step], (mode, step)
      assert len(set(sum(parts, []))) == len(ref_rows[step])  # distinct rows


def _kill9_during_the_teacher(tmp_path, over, prefix, times):
  """Pod 1 of the fault tests: kill -9 of process 1 once a teacher checkpoint is complete and
  step 2 logged; process 0 must stop within the heartbeat bound saying it lost its peer, with
  the complete checkpoints kept and the teacher unfinished. Returns (process 0's exit code, the
  complete checkpoint steps)."""
  workdir = str(tmp_path / "run")
  pod = _pod(tmp_path, "logs1", over, env_prefix=prefix)
  try:
    _wait_until(lambda: _steps(workdir) and _logged(workdir, "teacher", 2), pod,
                "a teacher checkpoint and step 2")
    t0 = time.time()
    pod.procs[1].kill()
    codes = pod.wait(timeout=90)
    times["kill -9 -> process 0 exited"] = time.time() - t0
  finally:
    pod.kill()
  times["pod 1"] = time.time() - pod.started
  assert codes[1] == -signal.SIGKILL
  # gloo fails the collective in flight at once; the coordination service's heartbeat timeout
  # (local_pod: 10 s) stops a process that is not in one
  assert codes[0] in (69, -signal.SIGABRT), (codes, pod.output(0)[-3000:])
  assert times["kill -9 -> process 0 exited"] < 60, times
  out = pod.output(0)
  assert any(t in out for t in PEER_LOST), out[-3000:]
  complete = _steps(workdir)
  assert complete and max(complete) < STEPS, complete
  assert not os.path.exists(os.path.join(workdir, "teacher")), "the teacher ended before the kill"
  return codes[0], complete


def _sigterm_at(tmp_path, over, prefix, times, mode: str, step: int):
  """Pod 2 of the fault tests: the command again, SIGTERM to both processes once `mode` has
  logged `step`; both must exit 143. Returns the ended pod (for its outputs)."""
  workdir = str(tmp_path / "run")
  pod = _pod(tmp_path, "logs2", over, env_prefix=prefix)
  try:
    _wait_until(lambda: _logged(workdir, mode, step), pod, f"{mode} step {step}")
    t0 = time.time()
    pod.signal(signal.SIGTERM)
    codes = pod.wait(timeout=120)
    times["SIGTERM -> both exited"] = time.time() - t0
  finally:
    pod.kill()
  times["pod 2"] = time.time() - pod.started
  assert codes == [143, 143], (codes, pod.output(0)[-2000:], pod.output(1)[-2000:])
  return pod


def _pipeline_to_the_end(tmp_path, prefix, times) -> str:
  """Pod 3 of the fault tests: the pipeline command on the same workdir, run to the end (both
  processes exit 0); returns process 0's output."""
  pod = _pod(tmp_path, "logs3", TOY, env_prefix=prefix)
  try:
    codes = pod.wait(timeout=300)
  finally:
    pod.kill()
  times["pod 3"] = time.time() - pod.started
  assert codes == [0, 0], pod.output(0)[-3000:]
  return pod.output(0)


def _summary(code0, complete, sigterm: str, times: dict, t_test: float):
  print(f"kill -9: process 0 exited {code0}; checkpoints {complete}; SIGTERM: {sigterm}; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        + f"; test {time.time() - t_test:.1f} s (the reference ran alongside)")


def test_pod_survives_kill9_and_sigterm_with_the_one_process_numbers(tmp_path, reference):
  """The toy teacher on 2 processes x 4 devices, one shared workdir, and the two faults of a pod:

  1. kill -9 of process 1 (a host dies): process 0 exits 69 with one clear line (or is stopped by
     JAX's coordination service) within the heartbeat bound;
  2. the same command again resumes from the last complete checkpoint and gets SIGTERM on both
     processes (a maintenance event): both save the same step and exit 143;
  3. the pipeline command: resumes the teacher from that step, ends it, distils and evaluates on
     the 2 processes.

  The metrics (teacher, distillation, evaluation) and every step's rows equal the 1-process
  8-device pipeline run's.

  (The cost of a pod is every process compiling every program at every start, ~5 CPU-s of
  imports plus the programs: the first two pods run the teacher alone. SIGTERM during the
  distillation on 2 processes: the slow
  test_pod_pipeline_survives_kill9_and_sigterm_with_the_one_process_numbers; on 1 process:
  tests/test_faults.py.)"""
  workdir, prefix = str(tmp_path / "run"), str(tmp_path / "data")
  times = {}
  t_test = time.time()
  # 1. kill -9 once the first checkpoint is complete
  code0, complete = _kill9_during_the_teacher(tmp_path, TEACHER, prefix, times)

  # 2. restart: the teacher resumes; SIGTERM to both processes two steps later
  resumed = max(complete)
  pod = _sigterm_at(tmp_path, TEACHER, prefix, times, "teacher", resumed + 2)
  assert f"[teacher] resumed from step {resumed}" in pod.output(0)
  stop = max(_steps(workdir))
  assert resumed + 2 <= stop < STEPS, _steps(workdir)
  for i in range(2):
    assert f"[teacher] SIGTERM: saved step {stop} in" in pod.output(i), pod.output(i)[-2000:]
  assert not os.path.exists(os.path.join(workdir, "teacher"))

  # 3. the pipeline: resumes the teacher from the SIGTERM step, ends it, distils, evaluates
  out = _pipeline_to_the_end(tmp_path, prefix, times)
  assert f"[teacher] resumed from step {stop}" in out
  assert os.path.exists(os.path.join(workdir, "teacher", "teacher.json"))
  _check_against_reference(workdir, prefix, reference)
  _summary(code0, complete, f"saved step {stop}", times, t_test)


# the default suite's test_pod_survives_kill9_and_sigterm_with_the_one_process_numbers has the same
# kill -9, SIGTERM (during the teacher) and the pipeline's comparison after its last restart
@pytest.mark.slow
def test_pod_pipeline_survives_kill9_and_sigterm_with_the_one_process_numbers(tmp_path, reference):
  """The toy pipeline on 2 processes x 4 devices, one shared workdir, and the two faults of a pod:

  1. kill -9 of process 1 during the teacher (a host dies): process 0 exits 69 with one clear
     line (or is stopped by JAX's coordination service) within the heartbeat bound;
  2. the same command again resumes the teacher from the last complete checkpoint, distils, and
     gets SIGTERM on both processes during the distillation (a maintenance event): both save the
     same round and exit 143;
  3. the same command again resumes the distillation from that round and evaluates.

  The metrics (teacher, distillation, evaluation) and every step's rows equal the 1-process
  8-device run's."""
  workdir, prefix = str(tmp_path / "run"), str(tmp_path / "data")
  times = {}
  t_test = time.time()
  # 1. kill -9 during the teacher, once its first checkpoint is complete
  code0, complete = _kill9_during_the_teacher(tmp_path, TOY, prefix, times)

  # 2. restart: the teacher resumes and ends, the distillation starts; SIGTERM to both processes
  pod = _sigterm_at(tmp_path, TOY, prefix, times, "distill", 2)
  assert f"[teacher] resumed from step {max(complete)}" in pod.output(0)
  saved = _steps(workdir, "checkpoints")
  stop = max(saved)
  assert 2 <= stop < ROUNDS, saved
  for i in range(2):
    assert f"[distill] SIGTERM: saved step {stop} in" in pod.output(i), pod.output(i)[-2000:]

  # 3. the same command: the saved teacher is loaded, the distillation resumes, evaluation
  out = _pipeline_to_the_end(tmp_path, prefix, times)
  assert f"[distill] resumed from step {stop}" in out
  assert "[teacher] resumed" not in out
  _check_against_reference(workdir, prefix, reference)
  _summary(code0, complete, f"saved round {stop}", times, t_test)


@pytest.mark.slow
def test_sigterm_during_the_teacher_saves_one_step_and_resumes_exactly(tmp_path, reference):
  """SIGTERM to both processes during the teacher in teacher mode (the default-suite test sends it
  during the teacher too, after a kill -9 and a restart): both exit 143 after saving the same
  step; the same command continues to the 1-process run's teacher metrics and rows."""
  workdir, prefix = str(tmp_path / "run"), str(tmp_path / "data")
  pod = _pod(tmp_path, "logs1", TEACHER, env_prefix=prefix)
  try:
    _wait_until(lambda: _logged(workdir, "teacher", 3), pod, "teacher step 3")
    t0 = time.time()
    pod.signal(signal.SIGTERM)
    codes = pod.wait(timeout=120)
    took = time.time() - t0
  finally:
    pod.kill()
  assert codes == [143, 143], (codes, pod.output(0)[-2000:], pod.output(1)[-2000:])
  stop = max(_steps(workdir))
  assert 3 <= stop < STEPS
  for i in range(2):
    assert f"[teacher] SIGTERM: saved step {stop} in" in pod.output(i)
  print(f"SIGTERM: both processes exited 143 in {took:.1f} s, checkpoint {stop}")
  pod = _pod(tmp_path, "logs2", TEACHER, env_prefix=prefix)
  try:
    codes = pod.wait(timeout=300)
  finally:
    pod.kill()
  assert codes == [0, 0], pod.output(0)[-3000:]
  assert f"[teacher] resumed from step {stop}" in pod.output(0)
  _check_against_reference(workdir, prefix, reference, modes=("teacher",))


@pytest.mark.slow
def test_pod_pipeline_four_processes_equal_one(tmp_path, reference):
  """4 processes x 2 devices: the toy pipeline's metrics and rows equal the 1-process 8-device
  run's (process p feeds rows [p*b, (p+1)*b), b = global batch / 4)."""
  prefix = str(tmp_path / "data")
  pod = _pod(tmp_path, "logs", TOY, n=4, devices=2, env_prefix=prefix)
  try:
    codes = pod.wait(timeout=600)
  finally:
    pod.kill()
  assert codes == [0] * 4, pod.output(0)[-3000:]
  print(f"4 x 2 pod run: {time.time() - pod.started:.1f} s")
  _check_against_reference(str(tmp_path / "run"), prefix, reference, n=4)


@pytest.mark.slow
def test_restart_with_another_process_count_is_refused(tmp_path):
  """A checkpoint written by 2 processes: a 1-process (8 devices) resume of the training stops
  with one line naming both counts (the data positions are per process); the state itself
  restores on 1 process with the checksum the 2 processes saved."""
  over = dict(TEACHER, **{"teacher.steps": 10})
  pod = _pod(tmp_path, "logs1", over)
  try:
    codes = pod.wait(timeout=400)
  finally:
    pod.kill()
  assert codes == [0, 0], pod.output(0)[-3000:]
  workdir = str(tmp_path / "run")
  from ibmd_jax import checkpointing as ckpt
  from ibmd_jax import programs
  from ibmd_jax import sharding as shd
  from ibmd_jax.errors import CheckpointMismatch
  from ibmd_jax.tasks import make_task

  cfg = _toy_config(dict(over, **{"teacher.steps": 20}))
  task = make_task(cfg)
  mesh = shd.mesh_from_config(cfg)
  _, planned = programs.teacher_program(cfg, task, mesh)
  manager = ckpt.RunCheckpointer(os.path.join(workdir, "teacher_checkpoints"))
  try:
    step, state, meta = manager.restore_latest(planned.abstract)  # the state: any process count
    assert step == 10 and meta["processes"] == 2
    assert ckpt.state_digest(state)[0] == meta["checksum"]
    with pytest.raises(CheckpointMismatch, match="written by a run of 2 processes and this run "
                                                 "has 1"):
      manager.restore_latest(planned.abstract, task.train_data("teacher", 64))
    # and on 4 devices of this process (a 4x1 mesh, fsdp 2): the same checksum
    import jax
    cfg4 = _toy_config(dict(over, **{"mesh.data": 2, "mesh.fsdp": 2}))
    mesh4 = shd.mesh_from_config(cfg4, jax.devices()[:4])
    _, planned4 = programs.teacher_program(cfg4, task, mesh4)
    step4, state4, _ = manager.restore_latest(planned4.abstract)
    assert step4 == 10 and ckpt.state_digest(state4)[0] == meta["checksum"]
  finally:
    manager.close()


IMAGE = {"teacher.steps": 4, "teacher.save_every": 2, "distill.rounds": 2, "distill.critic_steps": 1,
         "checkpoint.every": 1, "log_every": 1, "eval.num_images": 8, "eval.teacher_nfes": (1,),
         "eval.student_steps": (1,)}


@pytest.mark.slow
def test_image_pipeline_two_processes_equal_one(tmp_path):
  """The tiny I2SB super-resolution pipeline (teacher, distillation, evaluation) on 2 processes x
  4 devices gives the 1-process 8-device run's metrics, and each process fed its rows [p*b,
  (p+1)*b) of the 1-process batches (grain's per-process stream, teacher and distillation). The
  1-process run goes alongside (both with FAST_COMPILE)."""
  args = ["--config=configs/i2sb_sr4_bicubic.py:tiny", "--config.mode=pipeline"] + [
      f"--config.{k}={v}" for k, v in IMAGE.items()]
  (tmp_path / "ref").mkdir()
  ref = _Reference(tmp_path / "ref", args)
  prefix = str(tmp_path / "data")
  try:
    pod = local_pod.start(2, 4, [*args, f"--workdir={tmp_path / 'run'}"],
                          log_dir=str(tmp_path / "logs"), env=_env(prefix))
    try:
      codes = pod.wait(timeout=1800)
    finally:
      pod.kill()
    print(f"image pipeline, 2 x 4 pod: {time.time() - pod.started:.1f} s")
    assert codes == [0, 0], pod.output(0)[-3000:]
    ref_dir, ref_prefix = ref.get()
  finally:
    ref.close()
  for mode in ("teacher", "distill", "eval"):
    want = {r["step"]: _numbers(r) for r in _rows(ref_dir, mode)}
    got = {r["step"]: _numbers(r) for r in _rows(str(tmp_path / "run"), mode)}
    assert got and want
    if mode == "eval":  # a metric can be inf (PSNR of the reference against itself)
      for step in want:
        for k in want[step]:
          assert (got[step][k] == want[step][k]
                  or np.isclose(got[step][k], want[step][k], rtol=1e-4, atol=1e-6)), k
      got = {s: {k: v for k, v in r.items() if np.isfinite(v)} for s, r in got.items()}
      want = {s: {k: v for k, v in r.items() if np.isfinite(v)} for s, r in want.items()}
    _compare_tol(f"image pipeline, 2 vs 1 process, {mode}", got, want, 1e-4, 1e-6)
    if mode == "eval":
      continue
    ref_rows, fed = _data(ref_prefix, 0, mode), [_data(prefix, p, mode) for p in range(2)]
    assert ref_rows
    for step in sorted(ref_rows):
      assert fed[0][step] + fed[1][step] == ref_rows[step], (mode, step)


@pytest.mark.slow
def test_second_run_on_a_live_workdir_is_refused_on_every_process(tmp_path):
  """While a 2-process run holds the workdir, a second 2-process run on it stops on both of its
  processes with the lock's one line (process 0 takes the lock and broadcasts the outcome)."""
  over = dict(TEACHER, **{"teacher.steps": 400})
  workdir = str(tmp_path / "run")
  first = _pod(tmp_path, "first", over)
  try:
    _wait_until(lambda: _logged(workdir, "teacher", 2), first, "teacher step 2")
    second = local_pod.start(2, 4, _args(over, workdir), log_dir=str(tmp_path / "second"))
    try:
      codes = second.wait(timeout=300)
    finally:
      second.kill()
    assert codes == [1, 1], codes
    for i in range(2):
      assert "is in use by" in second.output(i), second.output(i)[-2000:]
    assert all(p.poll() is None for p in first.procs)  # the first run goes on
  finally:
    first.signal(signal.SIGTERM)
    first.wait(timeout=120)
    first.kill()


def test_local_pod_command_line_says_what_is_missing(capsys):
  with pytest.raises(SystemExit) as e:
    local_pod.main(["--num_processes=2", "--", "--workdir=/tmp/x"])
  assert e.value.code == 2
  assert "pass the launcher's arguments after --" in capsys.readouterr().err
  env = local_pod.process_env(3, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo",
                                  "JAX_PROCESS_ID": "5"})
  assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=3"
  assert env["JAX_PLATFORMS"] == "cpu" and "JAX_PROCESS_ID" not in env
  assert local_pod.describe([-9, 69, None]) == "[-9 (SIGKILL), 69, None]"
