"""Run checkpoints: keep-last-K plus best, truncated checkpoints skipped, restore onto another mesh,
and a teacher written by teacher mode loaded by a separate distillation run."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax import checkpointing as ckpt
from ibmd_jax import teacher_io
from ibmd_jax import sharding as shd
from ibmd_jax import run as runner
from tests import toyrun


def _state(seed=0):
  k = jax.random.key(seed)
  return {"w": jax.random.normal(k, (64, 512)), "b": jnp.arange(8.0), "step": jnp.asarray(seed)}


def _abstract(tree, shardings=None):
  shapes = jax.eval_shape(lambda: tree)
  if shardings is None:
    return shapes
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                      shardings)


def test_keeps_last_k_plus_best(tmp_path):
  m = ckpt.RunCheckpointer(str(tmp_path / "ck"), max_to_keep=2, save_every=1, async_save=False,
                           best_metric="loss", best_mode="min")
  for step, loss in zip(range(1, 6), [3.0, 1.0, 2.0, 4.0, 5.0]):
    assert m.save(step, _state(step), {"step": step}, metrics={"loss": loss})
  assert m.best_step() == 2
  m.close()
  assert sorted(int(d) for d in os.listdir(tmp_path / "ck") if d.isdigit()) == [4, 5]
  assert [d for d in os.listdir(tmp_path / "ck_best") if d.isdigit()] == ["2"]
  step, state, meta = ckpt.RunCheckpointer(str(tmp_path / "ck_best")).restore_latest(
      _abstract(_state()))
  assert step == 2 and meta["metrics"]["loss"] == 1.0
  np.testing.assert_array_equal(state["w"], _state(2)["w"])


def test_a_reader_leaves_a_live_runs_unfinished_checkpoint_alone(tmp_path):
  """A read-only open (an evaluation of a run's checkpoints while the run goes on, e.g.
  bench/digits.py --curve) restores the newest and removes nothing; a writer's open cleans up
  the unfinished `*-tmp` directory as before (it crashed a live run's save when readers opened as
  writers: Orbax's "Error writing step/0 ... 550.orbax-checkpoint-tmp")."""
  directory = str(tmp_path / "ck")
  m = ckpt.RunCheckpointer(directory, save_every=1, async_save=False)
  m.save(3, _state(3))
  m.close()
  live = tmp_path / "ck" / "4.orbax-checkpoint-tmp"
  live.mkdir()
  (live / "being_written").write_text("x")
  import time

  def gone_within(seconds):  # Orbax cleans up in a background future
    end = time.time() + seconds
    while live.exists() and time.time() < end:
      time.sleep(0.05)
    return not live.exists()

  reader = ckpt.RunCheckpointer(directory, read_only=True)
  step, state, _ = reader.restore_latest(_abstract(_state()))
  assert step == 3 and int(state["step"]) == 3
  assert not gone_within(2.0)
  reader.close()
  assert (live / "being_written").exists()
  writer = ckpt.RunCheckpointer(directory)
  assert gone_within(10.0)
  writer.close()


def test_bad_best_mode_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="best_mode"):
    ckpt.RunCheckpointer(str(tmp_path / "ck"), best_metric="loss", best_mode="lowest")


def test_truncated_checkpoint_is_skipped_and_kept(tmp_path):
  directory = str(tmp_path / "ck")
  m = ckpt.RunCheckpointer(directory, max_to_keep=3, save_every=1, async_save=False)
  for step in (1, 2):
    m.save(step, _state(step), {"step": step})
  m.close()
  # Truncate every file of the newest state item (as a kill in the middle of a copy would).
  newest = os.path.join(directory, "2", "state")
  for root, _, files in os.walk(newest):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(3)
  step, state, _ = ckpt.RunCheckpointer(directory).restore_latest(_abstract(_state()))
  assert step == 1
  np.testing.assert_array_equal(state["w"], _state(1)["w"])
  assert os.path.isdir(newest), "a failed restore must not delete anything"


@pytest.mark.parametrize("src,dst", [((4, 2), (1, 1)), ((1, 1), (2, 4))])
def test_restore_onto_a_different_mesh(tmp_path, src, dst):
  devices = jax.devices()
  assert len(devices) >= 8, "conftest sets 8 CPU devices"
  mesh_a = shd.make_mesh(*src, devices=devices[:src[0] * src[1]])
  mesh_b = shd.make_mesh(*dst, devices=devices[:dst[0] * dst[1]])
  state = _state(3)
  state_a = jax.device_put(state, shd.state_shardings(mesh_a, state))
  m = ckpt.RunCheckpointer(str(tmp_path / "ck"), save_every=1, async_save=False)
  m.save(7, state_a, {"step": 7})
  m.close()
  sh_b = shd.state_shardings(mesh_b, state)
  step, restored, _ = ckpt.RunCheckpointer(str(tmp_path / "ck")).restore_latest(
      _abstract(state, sh_b))
  assert step == 7
  for name in state:
    np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(state[name]))
    assert restored[name].sharding.is_equivalent_to(sh_b[name], state[name].ndim)
  assert len(restored["w"].sharding.device_set) == dst[0] * dst[1]


def test_distill_loads_a_teacher_written_by_teacher_mode(tmp_path):
  # a teacher-mode run of the suite's shared tiny toy (tests/toyrun.py), trained once per session
  teacher = toyrun.teacher_dir()
  saved, _ = teacher_io.load_teacher(teacher)

  cfg = toyrun.config("distill")
  cfg.distill.teacher = "network"
  cfg.teacher.source = "checkpoint"
  cfg.teacher.checkpoint = teacher
  cfg.distill.rounds = 2
  out = runner.run(cfg, str(tmp_path / "distill_run"))
  assert int(out["state"].step) == 2
  assert not os.path.exists(tmp_path / "distill_run" / "teacher"), "no teacher trained again"
  # The critic starts from the loaded teacher; after two rounds it moved, but stays close.
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(jnp.asarray(a) - b))),
                       out["state"].critic, saved)
  assert 0 < max(jax.tree.leaves(diffs)) < 0.1

  cfg.model.width = 48  # a teacher of another architecture is refused with both configs named
  with pytest.raises(ValueError, match="does not fit this config.*model.width.*make the config agree"):
    runner.run(cfg, str(tmp_path / "distill_run2"))


def test_a_write_finishing_after_its_failed_save_prints_nothing(monkeypatch):
  """When one write of a save fails (full disk), Orbax closes the save's event loop while the other
  writes still run; each then hands 'Event loop is closed' to sys.unraisablehook (the bare
  tracebacks that followed the one-line disk error). The checkpointer's hook drops exactly those
  and passes every other unraisable error on."""
  import asyncio
  import sys
  import tensorstore as ts
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_value))
  ckpt._quiet_disk_errors()
  ckpt._quiet_disk_errors()  # installed once

  def orphan():  # a TensorStore future awaited in a loop that closes before it completes
    promise, future = ts.Promise.new()

    async def save():
      task = asyncio.ensure_future(future)
      task._log_destroy_pending = False  # (asyncio's own note on the task left pending)
      await asyncio.sleep(0.01)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(save())
    loop.close()
    promise.set_result(1)  # the callback runs here and finds the loop closed

  orphan()
  assert seen == []
  other = RuntimeError("something else")
  sys.unraisablehook(type("Args", (), {"exc_value": other, "exc_traceback": None})())
  assert seen == [other]
  monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_value))
  orphan()  # without the hook the same callback is reported
  assert len(seen) == 2 and str(seen[1]) == "Event loop is closed"
