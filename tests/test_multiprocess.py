"""The pod path run for real: several JAX processes of the launcher on this machine (issue 37).

`launch.local_pod` starts N processes of `python -m launch.main --config.distributed=True`, each
with its own CPU devices, gloo collectives and one shared workdir. The tests compare them with a
1-process run on 8 devices (this pytest process, tests/conftest.py), from the data each process
fed (IBMD_JAX_DATA_LOG: a hash per row per step, ibmd_jax/data_log.py) and from the metrics, and
break them the ways a pod breaks: SIGTERM to every process (maintenance), kill -9 of one process
(a host dies), a restart with another process count.
"""
import json
import os
import signal
import time

import numpy as np
import pytest

from configs import toy_cond
from ibmd_jax import data_log
from ibmd_jax import run as runner
from launch import local_pod

STEPS = 30  # teacher steps of the default-suite runs
TOY = {"mode": "teacher", "model.width": 32, "teacher.steps": STEPS, "teacher.batch_size": 64,
       "teacher.save_every": 5, "log_every": 1}


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The 1-process 8-device run of TOY (in this process): its workdir and data log prefix."""
  root = tmp_path_factory.mktemp("reference")
  prefix = str(root / "data")
  old = os.environ.get(data_log.ENV)
  os.environ[data_log.ENV] = prefix
  try:
    runner.run(_toy_config(TOY), str(root / "run"))
  finally:
    if old is None:
      os.environ.pop(data_log.ENV)
    else:
      os.environ[data_log.ENV] = old
  return str(root / "run"), prefix


def _pod(tmp_path, name, over, n=2, devices=4, env_prefix=None):
  env = dict(os.environ)
  env.pop(data_log.ENV, None)
  if env_prefix:
    env[data_log.ENV] = env_prefix
  return local_pod.start(n, devices, _args(over, str(tmp_path / "run")),
                         log_dir=str(tmp_path / name), env=env)


def _wait_for_step(workdir, step, pod, timeout=300):
  end = time.time() + timeout
  path = os.path.join(workdir, "metrics.jsonl")
  while time.time() < end:
    if any(p.poll() is not None for p in pod.procs):
      raise AssertionError(f"a process ended early: {[p.poll() for p in pod.procs]}\n"
                           + pod.output(0)[-3000:])
    if os.path.exists(path) and any(r["step"] >= step for r in _rows(workdir)):
      return
    time.sleep(0.2)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def _check_against_reference(workdir, prefix, reference, n=2):
  ref_dir, ref_prefix = reference
  ref, got = _losses(ref_dir), _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  a, b = np.array([got[s] for s in sorted(got)]), np.array([ref[s] for s in sorted(ref)])
  print(f"2 vs 1 process: max |diff| {np.abs(a - b).max():.3g}, max rel "
        f"{(np.abs(a - b) / np.abs(b)).max():.3g} over {a.size} metrics")
  np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                             rtol=2e-5, atol=1e-6)
  # From the data: process p fed rows [p*b, (p+1)*b) of the 1-process run's batch at every step,
  # so no example was read twice or skipped, and the restarted processes went on exactly
  ref_rows = _data(ref_prefix, 0)
  fed = [_data(prefix, p) for p in range(n)]
  for step in range(1, STEPS + 1):
    parts = [f[step] for f in fed]
    assert sum(parts, []) == ref_rows[step], step
    assert len(set(sum(parts, []))) == len(ref_rows[step])  # distinct rows


def test_sigterm_every_process_saves_one_step_and_resumes_exactly(tmp_path, reference):
  """2 processes x 4 devices; SIGTERM to both mid-run (a maintenance event): both exit 143 after
  saving the same step; the same command continues to the metrics and data of the 1-process run."""
  workdir, prefix = str(tmp_path / "run"), str(tmp_path / "data")
  pod = _pod(tmp_path, "logs1", TOY, env_prefix=prefix)
  try:
    _wait_for_step(workdir, 8, pod)
    t0 = time.time()
    pod.signal(signal.SIGTERM)
    codes = pod.wait(timeout=120)
    took = time.time() - t0
  finally:
    pod.kill()
  assert codes == [143, 143], (codes, pod.output(0)[-2000:], pod.output(1)[-2000:])
  saved = _steps(workdir)
  stop = max(saved)
  assert 8 <= stop < STEPS
  for i in range(2):
    assert f"SIGTERM: saved step {stop} in" in pod.output(i)
  print(f"SIGTERM: both processes exited 143 in {took:.1f} s, checkpoint {stop}")

  pod = _pod(tmp_path, "logs2", TOY, env_prefix=prefix)
  try:
    codes = pod.wait(timeout=300)
  finally:
    pod.kill()
  assert codes == [0, 0], pod.output(0)[-3000:]
  assert f"[teacher] resumed from step {stop}" in pod.output(0)
  _check_against_reference(workdir, prefix, reference)


def test_kill9_of_one_process_stops_the_others_and_resumes(tmp_path, reference):
  """kill -9 of process 1 mid-run (a host dies): process 0 exits 69 with one clear line within
  the heartbeat bound; the restarted run resumes from the last complete checkpoint and ends with
  the 1-process run's metrics."""
  workdir, prefix = str(tmp_path / "run"), str(tmp_path / "data")
  pod = _pod(tmp_path, "logs1", TOY, env_prefix=prefix)
  try:
    _wait_for_step(workdir, 12, pod)
    t0 = time.time()
    pod.procs[1].kill()
    codes = pod.wait(timeout=90)
    took = time.time() - t0
  finally:
    pod.kill()
  assert codes[1] == -signal.SIGKILL
  # gloo fails the collective in flight at once; the coordination service's heartbeat timeout
  # (local_pod: 10 s) stops a process that is not in one
  assert codes[0] in (69, -signal.SIGABRT), (codes, pod.output(0)[-3000:])
  assert took < 60, took
  out = pod.output(0)
  assert ("lost contact with another process of this run" in out
          or "Terminating process because the JAX distributed service detected fatal errors"
          in out), out[-3000:]
  print(f"kill -9 of process 1: process 0 exited {codes[0]} after {took:.1f} s")
  complete = _steps(workdir)
  assert complete and max(complete) < STEPS

  pod = _pod(tmp_path, "logs2", TOY, env_prefix=prefix)
  try:
    codes = pod.wait(timeout=300)
  finally:
    pod.kill()
  assert codes == [0, 0], pod.output(0)[-3000:]
  assert f"[teacher] resumed from step {max(complete)}" in pod.output(0)
  _check_against_reference(workdir, prefix, reference)


@pytest.mark.slow
def test_restart_with_another_process_count_is_refused(tmp_path):
  """A checkpoint written by 2 processes: a 1-process (8 devices) resume of the training stops
  with one line naming both counts (the data positions are per process); the state itself
  restores on 1 process with the checksum the 2 processes saved."""
  over = dict(TOY, **{"teacher.steps": 10})
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


IMAGE = {"teacher.steps": 4, "teacher.save_every": 2, "distill.rounds": 2, "checkpoint.every": 1,
         "log_every": 1, "eval.num_images": 8}


@pytest.mark.slow
def test_image_pipeline_two_processes_equal_one(tmp_path):
  """The tiny I2SB super-resolution pipeline (teacher, distillation, evaluation) on 2 processes x
  4 devices gives the 1-process 8-device run's metrics, and each process fed its rows [p*b,
  (p+1)*b) of the 1-process batches (grain's per-process stream, teacher and distillation)."""
  from configs import i2sb_sr4_bicubic

  def cfg():
    c = i2sb_sr4_bicubic.get_config("tiny")
    c.mode = "pipeline"
    c.update_from_flattened_dict(dict(IMAGE))  # dotted keys
    return c

  ref_prefix = str(tmp_path / "ref_data")
  os.environ[data_log.ENV] = ref_prefix
  try:
    runner.run(cfg(), str(tmp_path / "ref"))
  finally:
    os.environ.pop(data_log.ENV)
  prefix = str(tmp_path / "data")
  env = dict(os.environ, **{data_log.ENV: prefix})
  args = ["--config=configs/i2sb_sr4_bicubic.py:tiny", f"--workdir={tmp_path / 'run'}",
          "--config.mode=pipeline"] + [f"--config.{k}={v}" for k, v in IMAGE.items()]
  pod = local_pod.start(2, 4, args, log_dir=str(tmp_path / "logs"), env=env)
  try:
    codes = pod.wait(timeout=900)
  finally:
    pod.kill()
  assert codes == [0, 0], pod.output(0)[-3000:]
  for mode, keys in (("teacher", ("loss", "grad_norm")),
                     ("distill", ("gen_loss", "critic_loss", "gen_grad_norm"))):
    ref, got = _losses(str(tmp_path / "ref"), mode, keys), _losses(str(tmp_path / "run"), mode, keys)
    assert sorted(got) == sorted(ref) and got
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                               rtol=1e-4, atol=1e-6)
    ref_rows, fed = _data(ref_prefix, 0, mode), [_data(prefix, p, mode) for p in range(2)]
    for step in sorted(ref_rows):
      assert fed[0][step] + fed[1][step] == ref_rows[step], (mode, step)
  ref_eval = [r for r in _rows(str(tmp_path / "ref"), "eval")]
  got_eval = [r for r in _rows(str(tmp_path / "run"), "eval")]
  for a, b in zip(ref_eval, got_eval):
    for k, v in a.items():
      if isinstance(v, float) and "per_s" not in k and "per_sample" not in k and k != "eta_s":
        np.testing.assert_allclose(b[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_second_run_on_a_live_workdir_is_refused_on_every_process(tmp_path):
  """While a 2-process run holds the workdir, a second 2-process run on it stops on both of its
  processes with the lock's one line (process 0 takes the lock and broadcasts the outcome)."""
  over = dict(TOY, **{"teacher.steps": 400})
  workdir = str(tmp_path / "run")
  first = _pod(tmp_path, "first", over)
  try:
    _wait_for_step(workdir, 2, first)
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
