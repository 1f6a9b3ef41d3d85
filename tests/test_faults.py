"""Fault injection: every fault of the reliability issue, on small toy runs, with its outcome.

Each test breaks something a user or a machine breaks (a config changed between restarts,
corrupt or truncated checkpoints, diverging learning rates, a teacher of another setup, bad
values, a second run on the same workdir, a full disk, kill -9 during saves) and asserts what must
happen: the exit code or error and its message, which checkpoints remain, and that the metrics
equal an uninterrupted run's. docs/reliability.md lists the faults with the test of each.
"""
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import toy_cond
from ibmd_jax import checkpointing as ckpt
from ibmd_jax import teacher_io
from ibmd_jax.options import task_options
from ibmd_jax import checks
from ibmd_jax import run as runner
from ibmd_jax import train
from ibmd_jax.errors import (CheckpointMismatch, ConfigError, DiskFullError,
                             NoRestorableCheckpoint, NonFiniteError, RunError, TeacherMismatch,
                             WorkdirLocked)
from tests import toyrun

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 8


def _cfg(mode="distill", **over):
  # the suite's shared tiny toy (tests/toyrun.py: its programs compile once per session), with
  # constant learning rates: a run's trajectory does not depend on its length, so a run to 6
  # rounds continued to 8 is the run to 8
  assert toyrun.SHRINK["distill.rounds"] == ROUNDS
  return toyrun.config(mode, **{"teacher.save_every": 10, **over})


def _rows(workdir, mode="distill"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["mode"] == mode]


def _losses(workdir):
  return [(r["step"], r["gen_loss"], r["critic_loss"]) for r in _rows(workdir)]


def _steps(workdir, sub="checkpoints"):
  d = os.path.join(workdir, sub)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def teacher_dir():
  return toyrun.teacher_dir()  # a teacher-mode run of _cfg's setup, shared by the test files


@pytest.fixture(scope="module")
def reference(teacher_dir, tmp_path_factory):
  """An uninterrupted distillation of ROUNDS rounds: its (step, losses) rows."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  shutil.copytree(teacher_dir, os.path.join(workdir, "teacher"))
  runner.run(_cfg(), workdir)
  return _losses(workdir)


@pytest.fixture(scope="module")
def base(teacher_dir, tmp_path_factory):
  """A workdir after 6 rounds (checkpoints 2, 4, 6); tests work on copies of it (_copy)."""
  workdir = str(tmp_path_factory.mktemp("base") / "run")
  shutil.copytree(teacher_dir, os.path.join(workdir, "teacher"))
  runner.run(_cfg(**{"distill.rounds": 6}), workdir)
  return workdir


def _workdir(tmp_path, teacher_dir, name="run"):
  workdir = str(tmp_path / name)
  shutil.copytree(teacher_dir, os.path.join(workdir, "teacher"))
  return workdir


def _copy(tmp_path, base, name="run"):
  workdir = str(tmp_path / name)
  shutil.copytree(base, workdir, ignore=shutil.ignore_patterns("jax_cache"))
  return workdir


def _same(rows, ref):
  assert [r[0] for r in rows] == [r[0] for r in ref]  # every step once, in order
  np.testing.assert_allclose(np.array([r[1:] for r in rows]), np.array([r[1:] for r in ref]),
                             rtol=1e-5, atol=1e-7)


def _snapshot(directory):
  """{relative path: bytes} of every file under directory (to prove nothing was touched)."""
  out = {}
  for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


# ------------------------------------------------------------------ restarts after config changes
@pytest.mark.parametrize("change,leaf", [
    ({"distill.z_channels": 4}, "gen"),  # more noise input channels: the first layer grows
    ({"distill.gen_optimizer.grad_clip": 1.0}, "gen_opt"),  # a clipping state joins the optimiser
])
def test_a_config_change_that_alters_the_state_stops_and_keeps_everything(tmp_path, base, change,
                                                                           leaf):
  workdir = _copy(tmp_path, base)
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
  with pytest.raises(CheckpointMismatch) as e:
    runner.run(_cfg(**change), workdir)
  msg = str(e.value)
  key = next(iter(change))
  assert "step 6" in msg and leaf in msg and key in msg and "start_over" in msg, msg
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before  # nothing rotated or added
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before


def test_start_over_moves_the_earlier_checkpoints_aside(tmp_path, base):
  workdir = _copy(tmp_path, base)
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  runner.run(_cfg(**{"distill.z_channels": 4, "checkpoint.start_over": True}), workdir)
  aside = glob.glob(os.path.join(workdir, "checkpoints.replaced-*"))
  assert len(aside) == 1 and _snapshot(aside[0]) == before  # moved, not deleted
  assert _steps(workdir) == [4, 6, 8]
  assert [r["step"] for r in _rows(workdir)] == list(range(1, ROUNDS + 1))  # one run's rows
  superseded = [json.loads(l) for l in open(os.path.join(workdir, "metrics.superseded.jsonl"))]
  assert [r["step"] for r in superseded] == list(range(1, 7))  # the earlier run's, kept aside


def test_a_change_that_keeps_the_state_resumes_exactly(tmp_path, base, reference):
  workdir = _copy(tmp_path, base)
  runner.run(_cfg(), workdir)  # more rounds: the same state tree, the run goes on from 6
  _same(_losses(workdir), reference)


def test_a_state_of_another_width_is_named_leaf_by_leaf(tmp_path):
  directory = str(tmp_path / "ckpt")
  state = {"net": {"w": np.ones((4, 64), np.float32), "b": np.zeros(64, np.float32)}}
  m = ckpt.RunCheckpointer(directory, save_every=1, async_save=False,
                           fingerprint={"model.width": 64})
  m.save(1, jax.tree.map(jax.numpy.asarray, state))
  m.close()
  want = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0], 32) if x.ndim == 2 else (32,),
                                                     x.dtype), state)
  m = ckpt.RunCheckpointer(directory, fingerprint={"model.width": 32})
  with pytest.raises(CheckpointMismatch) as e:
    m.restore_latest(want)
  m.close()
  msg = str(e.value)
  assert "net/w: [4, 64] float32 -> [4, 32] float32" in msg and "model.width: 64 -> 32" in msg


# ------------------------------------------------------------------ corrupt checkpoints
def _truncate_data_files(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p) and os.path.getsize(p) > 256]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def test_every_checkpoint_truncated_refuses_then_starts_over_on_request(tmp_path, base):
  workdir = _copy(tmp_path, base)
  for step in _steps(workdir):
    _truncate_data_files(os.path.join(workdir, "checkpoints", str(step)))
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  with pytest.raises(NoRestorableCheckpoint, match="none of the checkpoints.*start_over"):
    runner.run(_cfg(), workdir)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before
  runner.run(_cfg(**{"checkpoint.start_over": True}), workdir)
  assert len(glob.glob(os.path.join(workdir, "checkpoints.replaced-*"))) == 1
  assert _steps(workdir) == [4, 6, 8]


def _flip_bytes(step_dir, n=64, seed=0):
  """Flips n bytes in the middle of every state data file; sizes stay the same."""
  rng = random.Random(seed)
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p) and os.path.getsize(p) > 4 * n]
  assert files
  for path in files:
    data = bytearray(open(path, "rb").read())
    for _ in range(n):
      i = rng.randrange(len(data) // 4, 3 * len(data) // 4)
      data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_flipped_bytes_fall_back_to_the_previous_checkpoint(tmp_path, base, reference, capsys):
  workdir = _copy(tmp_path, base)
  _flip_bytes(os.path.join(workdir, "checkpoints", "6"))
  runner.run(_cfg(), workdir)
  out = capsys.readouterr().out
  assert "checkpoint 6 in" in out and "skipped" in out and "resumed from step 4" in out
  _same(_losses(workdir), reference)  # as if never interrupted


def test_data_that_read_back_differently_are_caught_by_the_checksum(tmp_path, capsys):
  """Silent corruption (the arrays read back fine but differ from what was saved; simulated by
  the saved checksum disagreeing) is skipped for the previous checkpoint."""
  directory = str(tmp_path / "c")
  m = ckpt.RunCheckpointer(directory, save_every=1, async_save=False)
  m.save(1, {"w": jax.numpy.ones(3)})
  m.save(2, {"w": jax.numpy.full(3, 2.0)})
  m.close()
  meta_path = os.path.join(directory, "2", "meta", "metadata")
  meta = json.load(open(meta_path))
  meta["checksum"][0] = (meta["checksum"][0] + 1) % (1 << 32)
  json.dump(meta, open(meta_path, "w"))
  m = ckpt.RunCheckpointer(directory)
  step, state, _ = m.restore_latest({"w": jax.ShapeDtypeStruct((3,), np.float32)})
  m.close()
  assert step == 1 and float(state["w"][0]) == 1.0
  assert "checkpoint 2 in" in capsys.readouterr().out


def test_a_finite_state_whose_first_step_is_not_falls_back_once(tmp_path, base, reference,
                                                                capsys):
  """A checkpoint can be intact and finite and still blow up at the next step (here: critic
  weights scaled by 1e30, written with a valid checksum): the run sets it aside, resumes from
  the one before, and says so."""
  workdir = _copy(tmp_path, base)
  cfg = _cfg(**{"distill.rounds": 6})
  task = runner.make_task(cfg)
  mesh = runner.shd.mesh_from_config(cfg)
  teacher = runner.get_teacher(cfg, workdir, task, None, mesh, train=False)
  planned, _, _ = runner._plan_distill_state(cfg, task, teacher, mesh)
  directory = os.path.join(workdir, "checkpoints")
  m = ckpt.RunCheckpointer(directory, fingerprint=ckpt.flat_config(cfg))
  step, state, _ = m.restore_latest(planned.abstract)
  assert step == 6
  bad = state.replace(critic=jax.tree.map(lambda x: x * 1e30, state.critic))
  shutil.rmtree(os.path.join(directory, "6"))
  m.manager.reload()
  m.save(6, bad, force=True)
  m.close()
  runner.run(_cfg(), workdir)
  out = capsys.readouterr().out
  assert "the first step after resuming from step 6 is not finite" in out
  assert "the checkpoint at step 6 is suspect" in out and "going on from step 4" in out
  assert glob.glob(os.path.join(directory, "suspect-6-*"))  # kept, out of the way
  _same(_losses(workdir), reference)


# ------------------------------------------------------------------ non-finite and diverging runs
def test_a_nan_run_stops_at_its_first_bad_step_and_keeps_the_good_checkpoints(
    tmp_path, base, reference):
  """lr 1e30 after 6 good rounds, metrics logged every 100 rounds (so only the in-step flag can
  see it): the run stops at round 7, the checkpoints 2, 4, 6 stay as they were, and a rerun
  with a sane lr resumes from 6 and ends as if it had never happened."""
  workdir = _copy(tmp_path, base)
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  lr = {"distill.critic_optimizer.lr": 1e30, "distill.gen_optimizer.lr": 1e30, "log_every": 100}
  with pytest.raises(NonFiniteError, match=r"step 7 is not finite \(.*loss.*fell back once, "
                                           r"from the checkpoint at step 6 to the one at step 4.*"
                                           r"not the cause"):
    runner.run(_cfg(**lr), workdir)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before  # none set aside or rotated
  runner.run(_cfg(), workdir)
  _same(_losses(workdir), reference)


def test_the_divergence_guard_stops_a_resumed_run_that_stays_finite(tmp_path, base, reference):
  """lr 1e3 after 6 good rounds: the losses jump by ~1e12 and stay finite; the guard compares
  them with the median of the rounds before the restart (kept in the checkpoint) and stops at
  round 7; nothing is saved, and a rerun with a sane lr ends as if it had never happened."""
  workdir = _copy(tmp_path, base)
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  lr = {"distill.critic_optimizer.lr": 1e3, "distill.gen_optimizer.lr": 1e3}
  with pytest.raises(NonFiniteError, match=r"step 7 diverges: critic_(loss|grad_norm)=.*times "
                                           r"its median over the previous 6 steps"):
    runner.run(_cfg(**lr), workdir)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before
  runner.run(_cfg(), workdir)
  _same(_losses(workdir), reference)


def test_the_divergence_guard_on_a_metric_stream():
  """The guard alone: a loss that grows 2000x past its running median stops the run at that
  step; 500x does not; guard.divergence_factor=0 never stops."""
  def stream(values, factor):
    loop = train.Loop(name="t", step_fn=None, state=None, data=None, total=100, directory="",
                      mesh=None, key=None, divergence_factor=factor, divergence_window=20)
    m = train._Metrics(loop, None, 0)
    for step, v in enumerate(values, 1):
      m.push(step, {"loss": np.float32(v), "finite": np.float32(1)})
    m.flush()

  base_values = [1.0, 1.2, 0.9, 1.1] * 5
  stream(base_values + [500.0], 1000.0)
  with pytest.raises(NonFiniteError, match="step 21 diverges: loss=2e\\+03"):
    stream(base_values + [2000.0], 1000.0)
  stream(base_values + [1e12], 0.0)
  stream([1.0] * 4 + [1e12], 1000.0)  # fewer than 5 steps of history: no verdict yet
  with pytest.raises(NonFiniteError, match="step 6 diverges"):
    stream([1.0] * 5 + [1e12], 1000.0)


def test_a_non_finite_state_is_never_saved(tmp_path):
  m = ckpt.RunCheckpointer(str(tmp_path / "c"), save_every=1, async_save=False)
  good = {"w": jax.numpy.ones(3), "opt": {"nu": jax.numpy.ones(3)}}
  m.save(1, good)
  bad = {"w": jax.numpy.ones(3), "opt": {"nu": jax.numpy.array([1.0, np.inf, 1.0])}}
  with pytest.raises(NonFiniteError, match="opt/nu"):
    m.save(2, bad)
  assert m.all_steps() == [1]
  m.close()


# ------------------------------------------------------------------ teachers of another setup
def test_a_teacher_of_another_bridge_is_refused(tmp_path, teacher_dir):
  workdir = _workdir(tmp_path, teacher_dir)
  meta_path = os.path.join(workdir, "teacher", "teacher.json")
  meta = json.load(open(meta_path))
  meta["bridge"]["kind"] = "ve"
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(TeacherMismatch, match="bridge.kind: teacher 've', config 'vp'"):
    runner.run(_cfg(), workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_a_teacher_of_another_coupling_is_refused(tmp_path, teacher_dir):
  workdir = _workdir(tmp_path, teacher_dir)
  with pytest.raises(TeacherMismatch, match="data.coupling: teacher 'cond_modes'"):
    runner.run(_cfg(**{"data.coupling": "cond_uneven"}), workdir)


def test_an_sr_teacher_is_refused_for_inpainting():
  """The I2SB SR teacher (beta_max 0.3, no OT-ODE, sr4) under the inpainting config (beta_max
  1.0, OT-ODE, inpaint_center): both differences are named."""
  from tests.test_image_tasks import load_config

  sr = load_config("i2sb_sr4_bicubic")
  inpaint = load_config("i2sb_inpaint")
  meta = {"model": None, "bridge": dict(sr.bridge), "data": dict(sr.data), "trained_steps": 10}
  why = teacher_io.teacher_mismatch(meta, task_options(inpaint))
  assert why and "bridge.beta_max" in why and "bridge.ot_ode" in why, why
  meta["bridge"] = dict(inpaint.bridge)
  why = teacher_io.teacher_mismatch(meta, task_options(inpaint))
  assert why and "data.degradation" in why, why
  meta["data"] = dict(inpaint.data)
  assert teacher_io.teacher_mismatch(meta, task_options(inpaint)) is None


def test_options_a_bridge_does_not_use_do_not_refuse_a_teacher(teacher_dir):
  cfg = _cfg()
  meta = teacher_io.read_teacher_meta(teacher_dir)
  cfg.bridge.sigma_max = 7.0  # a VE option under a VP bridge
  cfg.bridge.weighting = "uniform"  # the distillation's λ(t), not the teacher's function
  assert teacher_io.teacher_mismatch(meta, task_options(cfg)) is None


def test_an_untrained_teacher_is_refused_and_a_shorter_one_is_trained_on(
    tmp_path, teacher_dir, capsys):
  workdir = _workdir(tmp_path, teacher_dir)
  meta_path = os.path.join(workdir, "teacher", "teacher.json")
  meta = json.load(open(meta_path))
  json.dump({**meta, "trained_steps": 0}, open(meta_path, "w"))
  with pytest.raises(TeacherMismatch, match="trained for 0 steps"):
    runner.run(_cfg(), workdir)
  # a teacher trained for 20 steps under a pipeline asking for 30: trained on, not reused as is
  workdir = str(tmp_path / "longer")
  runner.run(_cfg("teacher"), workdir)
  runner.run(_cfg("teacher", **{"teacher.steps": 30}), workdir)
  out = capsys.readouterr().out
  assert "trained for 20 steps; teacher.steps=30: training on" in out
  assert "[teacher] resumed from step 20" in out
  assert teacher_io.read_teacher_meta(os.path.join(workdir, "teacher"))["trained_steps"] == 30
  with pytest.raises(ConfigError, match="trained for 30 steps but --config.teacher.steps=20"):
    runner.run(_cfg("pipeline"), workdir)


# ------------------------------------------------------------------ values that cannot work
@pytest.mark.parametrize("over,keys", [
    ({"teacher.steps": 0}, ["teacher.steps=0"]),
    ({"teacher.steps": -3}, ["teacher.steps=-3"]),
    ({"checkpoint.keep": 0}, ["checkpoint.keep=0"]),
    ({"distill.batch_size": 0, "checkpoint.every": 0},
     ["distill.batch_size=0", "checkpoint.every=0"]),
    ({"distill.batch_size": -4}, ["distill.batch_size=-4"]),
    ({"distill.rounds": 0}, ["distill.rounds=0"]),
])
def test_bad_values_are_named_before_any_work(tmp_path, over, keys):
  workdir = str(tmp_path / "w")
  with pytest.raises(ConfigError) as e:
    runner.run(_cfg("pipeline", **over), workdir)
  for key in keys:
    assert f"--config.{key} must be" in str(e.value)
  assert not os.path.exists(workdir)


def test_lowering_rounds_below_the_newest_checkpoint_is_one_clear_error(tmp_path, base):
  workdir = _copy(tmp_path, base)
  with pytest.raises(ConfigError, match="holds step 6 but --config.distill.rounds=4: "
                                        "pass distill.rounds >= 6"):
    runner.run(_cfg(**{"distill.rounds": 4}), workdir)
  assert _steps(workdir) == [2, 4, 6]


# The launcher's input errors (an unknown key beside its known one, two bad values in one line,
# a workdir that is a file or not writable: exit 2 / 1, one line, nothing created) are cases of
# tests/test_cli_errors.py, whose command lines share one Python start.


# ------------------------------------------------------------------ one run per workdir
def test_a_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path, base):
  workdir = _copy(tmp_path, base)
  before = _snapshot(workdir)
  holder = checks.WorkdirLock(workdir).acquire()  # a live run: this process
  try:
    with pytest.raises(WorkdirLocked) as e:
      runner.run(_cfg(), workdir)
    assert f"process {os.getpid()} on host {socket.gethostname()}" in str(e.value)
    assert _snapshot(workdir) == before  # not even config.json was rewritten
  finally:
    holder.release()
  runner.run(_cfg(**{"distill.rounds": 6}), workdir)  # free again (and already done)
  assert not os.path.exists(os.path.join(workdir, ".lock"))  # released at the end


def _write_lock(workdir, host, pid, age_s):
  path = os.path.join(workdir, ".lock")
  os.makedirs(workdir, exist_ok=True)
  json.dump({"host": host, "pid": pid, "started": "then"}, open(path, "w"))
  t = time.time() - age_s
  os.utime(path, (t, t))


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(workdir, socket.gethostname(), dead.pid, 0)  # this host, process gone
  checks.WorkdirLock(workdir).acquire().release()
  assert "took over a stale workdir lock" in capsys.readouterr().out
  _write_lock(workdir, "other-host", 12345, 10)  # another host, fresh heartbeat: alive
  with pytest.raises(WorkdirLocked, match="process 12345 on host other-host"):
    checks.WorkdirLock(workdir, stale_s=60).acquire()
  _write_lock(workdir, "other-host", 12345, 600)  # its heartbeat stopped 10 minutes ago
  lock = checks.WorkdirLock(workdir, stale_s=60, heartbeat_s=0.05).acquire()
  assert json.load(open(os.path.join(workdir, ".lock")))["pid"] == os.getpid()
  first = os.path.getmtime(os.path.join(workdir, ".lock"))
  time.sleep(0.3)
  assert os.path.getmtime(os.path.join(workdir, ".lock")) > first  # the heartbeat refreshes it
  with pytest.raises(WorkdirLocked):  # so even a short stale_s sees it alive
    checks.WorkdirLock(workdir, stale_s=0.2).acquire()
  lock.release()
  assert not os.path.exists(os.path.join(workdir, ".lock"))


# ------------------------------------------------------------------ full disk
def _distill_args(workdir, *more):
  # _cfg's run through the launcher: the same programs, loaded from the session's cache
  return ["--config=configs/toy_cond.py", f"--workdir={workdir}", "--config.mode=distill", *toyrun.launcher_args(), *more]


@pytest.fixture(scope="module")
def disk_runs(base, tmp_path_factory):
  """The two full-disk launcher runs, on copies of `base`, in one launcher subprocess
  (toyrun.launch_all): {name: (workdir, checkpoints before, CompletedProcess)}. Both load their
  programs from the session's cache (base's runs compiled them), so no cache entry is written."""
  runs, cases = {}, []
  for name in ("full", "midway"):
    workdir = _copy(tmp_path_factory.mktemp(name), base)
    runs[name] = (workdir, _snapshot(os.path.join(workdir, "checkpoints")))
  free = shutil.disk_usage(runs["full"][0]).free >> 20
  cases.append({"args": _distill_args(runs["full"][0],
                                      f"--config.checkpoint.min_free_mb={free + 1000}")})
  cases.append({"args": _distill_args(runs["midway"][0], "--config.distill.rounds=12"),
                # files of at most 64 KiB: the metrics fit, a checkpoint's arrays (~250 KiB) do not
                "fsize": 64 << 10})
  results = toyrun.launch_all(cases)
  return {name: (*runs[name], r) for name, r in zip(("full", "midway"), results)}


def test_a_full_disk_is_one_line_and_loses_nothing(disk_runs, reference):
  """Less free space than a checkpoint needs (here: checkpoint.min_free_mb asks for more than
  the disk has): one line naming the path and the space, exit 1, nothing written; the same
  command resumes once there is space."""
  workdir, before, r = disk_runs["full"]
  assert r.returncode == 1, r.stdout + r.stderr
  assert [l for l in r.stderr.splitlines() if not l.startswith(("W", "I"))] == [
      l for l in r.stderr.splitlines() if l.startswith("error:")], r.stderr
  line = r.stderr.splitlines()[-1]
  assert line.startswith(f"error: no space for the checkpoint of step 8 in {workdir}/checkpoints")
  assert "MiB are free" in line and "([2, 4, 6]) are intact" in line
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before
  runner.run(_cfg(), workdir)
  _same(_losses(workdir), reference)


def test_a_write_that_fails_midway_is_one_line_and_leaves_no_partial_checkpoint(disk_runs,
                                                                                 reference):
  """The disk fills while a checkpoint is being written (simulated: files may not grow past
  64 KiB, RLIMIT_FSIZE): the background write fails, the run stops at its next save with one line
  naming the step that failed, the partial checkpoint is removed, the earlier ones are intact."""
  workdir, before, r = disk_runs["midway"]
  assert r.returncode == 1, r.stdout + r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0], r.stderr[-3000:]
  assert errors[0].startswith(f"error: the checkpoint of step 8 did not fit in {workdir}/")
  assert "File too large" in errors[0]
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert not [n for n in names if "tmp" in n], names  # no partial checkpoint left
  # the newest checkpoints as they were (Orbax may already have rotated the oldest, 2, out)
  after = _snapshot(os.path.join(workdir, "checkpoints"))
  assert {k: v for k, v in before.items() if not k.startswith("2/")} == {
      k: v for k, v in after.items() if not k.startswith("2/")}
  assert f"saved before ({_steps(workdir)})" in errors[0]
  runner.run(_cfg(), workdir)  # space is back: it resumes and ends as if never interrupted
  _same(_losses(workdir), reference)


def test_too_little_free_space_is_caught_before_writing(tmp_path, monkeypatch):
  m = ckpt.RunCheckpointer(str(tmp_path / "c"), save_every=1, async_save=False)
  m.save(1, {"w": jax.numpy.ones(1000)})
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(ckpt.shutil, "disk_usage",
                      lambda p: usage._replace(free=1 << 20))
  with pytest.raises(DiskFullError, match=r"no space for the checkpoint of step 2 .* needs about "
                                          r"16 MiB .*, 1 MiB are free.*\(\[1\]\) are intact"):
    m.save(2, {"w": jax.numpy.ones(1000)})
  assert m.all_steps() == [1] and sorted(os.listdir(tmp_path / "c")) == ["1"]
  m.close()


# ------------------------------------------------------------------ kill -9
def _launch_args(workdir):
  return [sys.executable, "-m", "launch.main", "--config=configs/toy_cond.py",
          f"--workdir={workdir}", "--config.mode=distill",
          *toyrun.launcher_args(**{"checkpoint.every": 1}), "--config.checkpoint.keep=2"]


def test_kill_9_during_saves_resumes_exactly_without_duplicate_metrics(tmp_path, teacher_dir,
                                                                       reference):
  """Checkpoints at every round, so a kill lands in or near a save; a SIGTERM after round 2 (a
  preemption notice: exit 143 after a final save, no metrics beyond the saved step) and a kill at a
  random point after round 4, then the run is finished: the same losses as the
  uninterrupted run, every round logged once, the rows of the killed runs superseded. While the
  first one runs, a second launcher on its workdir is refused."""
  workdir = _workdir(tmp_path, teacher_dir)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  rng = random.Random(0)
  kills = terms = 0
  # (a second kill, after round 6, repeated this one: one launcher start, 8-10 CPU-s, less; the
  # kill comes last, so that the finishing run takes over the dead run's lock)
  for after in (2, 4):
    proc = subprocess.Popen(_launch_args(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
      if line.startswith(f"[distill] step {after}:"):
        if after == 2:  # a second launcher on the live run's workdir is refused, naming it
          proc.send_signal(signal.SIGSTOP)  # (paused meanwhile: alive, its rounds wait)
          second = subprocess.run(_launch_args(workdir), cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
          assert second.returncode == 1, second.stdout + second.stderr
          assert (f"is in use by the run of process {proc.pid} on host {socket.gethostname()}"
                  in second.stderr), second.stderr
          assert "Traceback" not in second.stderr
          proc.send_signal(signal.SIGCONT)
        if after == 2:  # SIGTERM: the launcher saves the state it holds and exits 143
          proc.send_signal(signal.SIGTERM)
          rest = proc.communicate(timeout=120)[0]
          assert proc.returncode == 143, rest
          assert "SIGTERM: saved step" in rest, rest
          saved = _steps(workdir)
          assert saved and max(saved) >= 2, saved
          assert max(r["step"] for r in _rows(workdir)) <= max(saved)
          terms += 1
          break
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the next save or step
        proc.send_signal(signal.SIGKILL)
        kills += 1
        break
    proc.wait(timeout=60)
  assert (kills, terms) == (1, 1)
  r = subprocess.run(_launch_args(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "took over a stale workdir lock" in r.stdout
  _same(_losses(workdir), reference)
  assert os.path.exists(os.path.join(workdir, "metrics.superseded.jsonl"))
