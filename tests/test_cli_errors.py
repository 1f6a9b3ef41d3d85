"""The README's launcher commands with the usual mistakes: each stops before any compile with ONE
`error:` line (no traceback) and the documented exit code (README "Exit codes": 1 an error to fix,
2 a bad config key or value)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = "--config=configs/toy_cond.py"
SR4 = "--config=configs/i2sb_sr4_bicubic.py"  # full size: its teacher is a converted checkpoint


def _launch(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "launch.main", *args, "--compilation_cache=off"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _corrupt_teacher(tmp_path):
  path = tmp_path / "teacher"
  (path / "params").mkdir(parents=True)
  (path / "teacher.json").write_text(json.dumps({"trained_steps": 10}))
  return str(path)


CASES = {  # name: (arguments after --workdir, exit code, text the error line names)
    "unknown key": ([TOY, "--config.distill.critc_steps=5"], 2,
                    "--config.distill.critc_steps is not a key of this config: distill has no "
                    "'critc_steps' (did you mean distill.critic_steps?)"),
    "unknown section": ([TOY, "--config.distil.rounds=5"], 2, "did you mean distill?"),
    "bad type": ([TOY, "--config.distill.rounds=abc"], 2, "--config.distill.rounds=abc"),
    "bad value": ([TOY, "--config.distill.rounds=0"], 2, "--config.distill.rounds=0 must be"),
    "no config file": (["--config=configs/toy_cnd.py"], 2, "configs/toy_cnd.py: no such config"),
    "teacher not converted yet": ([SR4], 1, "teachers/i2sb_sr4_bicubic/teacher does not exist"),
    "no teacher in the workdir": ([TOY, "--config.mode=distill"], 1,
                                  "run --config.mode=teacher (or pipeline) first"),
    "teacher path missing": ([TOY, "--config.mode=distill", "--config.teacher.source=checkpoint",
                              "--config.teacher.checkpoint=/nonexistent/teacher"], 1,
                             "/nonexistent/teacher does not exist"),
    "teacher corrupt": ([TOY, "--config.mode=distill", "--config.teacher.source=checkpoint",
                         "--config.teacher.checkpoint={corrupt}"], 1,
                        "could not read the teacher parameters"),
    "data path missing": ([SR4 + ":tiny", "--config.mode=teacher", "--config.data.kind=folder",
                           "--config.data.path=/nonexistent/images"], 1,
                          "data.path '/nonexistent/images' (kind='folder') does not exist"),
}


# Each case starts JAX in a subprocess (several seconds on a loaded 2-core machine); these repeat
# what a default case already covers through another path.
SLOW = {"unknown section", "no teacher in the workdir", "teacher path missing", "teacher corrupt"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_readme_command_with_a_mistake_is_one_error_line(tmp_path, name):
  args, code, text = CASES[name]
  args = [a.format(corrupt=_corrupt_teacher(tmp_path)) if "{corrupt}" in a else a for a in args]
  r = _launch(f"--workdir={tmp_path / 'run'}", *args)
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert r.returncode == code, (r.returncode, r.stderr[-2000:])
  assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert text in errors[0], errors[0]
  assert r.stderr.rstrip().endswith(errors[0]), r.stderr[-2000:]  # the last line


def test_bad_workdir_is_one_error_line(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  r = _launch(f"--workdir={afile}", TOY)
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
  assert "is a file, not a directory" in errors[0]
