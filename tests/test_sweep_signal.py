"""Sweep expansion, and SIGTERM during a distillation run triggers a final save (slow: the default
suite checks the same, and the exact resume after it, in tests/test_faults.py's kill -9 test,
whose second interruption is a SIGTERM; kill -9: the repeated kills during saves there.)"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_expands_a_2x2_grid_into_4_distinct_runs(tmp_path):
  cmds = sweep.commands("configs/toy_cond.py", str(tmp_path),
                        ["distill.critic_steps=1,5", "distill.z_channels=0,2"], ["--config.seed=3"])
  assert len(cmds) == 4
  workdirs = [c[4] for c in cmds]
  assert len(set(workdirs)) == 4
  assert workdirs[0] == f"--workdir={tmp_path}/critic_steps=1,z_channels=0"
  assert cmds[3][-3:] == ["--config.distill.critic_steps=5", "--config.distill.z_channels=2",
                          "--config.seed=3"]


def test_sweep_prints_commands_without_running(tmp_path):
  r = subprocess.run([sys.executable, "-m", "launch.sweep", "--config=configs/toy_cond.py",
                      f"--root={tmp_path}", "--grid=seed=0,1", "--grid=distill.n_steps=1,2"],
                     cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if "launch.main" in l]
  assert len(lines) == 4 and not any(p.is_dir() for p in tmp_path.iterdir())


@pytest.mark.slow
def test_sigterm_saves_a_final_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "launch.main", "--config=configs/toy_cond.py", f"--workdir={workdir}",
          "--config.teacher.steps=20", "--config.model.width=32", "--config.distill.rounds=100000",
          "--config.distill.batch_size=16", "--config.checkpoint.every=1000000", "--config.log_every=1",
          f"--compilation_cache={os.environ['IBMD_TEST_JAX_CACHE']}"]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  deadline = time.time() + 240
  seen = 0
  for line in proc.stdout:  # wait until a few distillation rounds ran
    if line.startswith("[distill] step"):
      seen += 1
      if seen == 3:
        break
    assert time.time() < deadline, "distillation did not start in time"
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate(timeout=120)[0]
  assert proc.returncode == 143, rest
  assert "SIGTERM: saved step" in rest
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert steps and max(steps) >= 3
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert max(r["step"] for r in rows if r["mode"] == "distill") <= max(steps)
