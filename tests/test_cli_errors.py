"""The README's launcher commands with the usual mistakes: each stops before any compile with ONE
`error:` line (no traceback) and the documented exit code (README "Exit codes": 1 an error to fix,
2 a bad config key or value).

Every command line of this file runs in one subprocess (tests/toyrun.py's launch_all: one Python
start and JAX import, a forked launcher per command line): a launcher start costs 3-4 CPU-s, most
of a failing command's cost. The input errors of tests/test_faults.py, tests/test_launch.py and
tests/test_gcs_workdir.py's launcher checks are cases here too (marked below)."""
import json
import os

import pytest

from tests import toyrun

REPO = toyrun.REPO
TOY = "--config=configs/toy_cond.py"
SR4 = "--config=configs/i2sb_sr4_bicubic.py"  # full size: its teacher is a converted checkpoint
UNWRITABLE = "/sys/ibmd_jax_test_run" if os.geteuid() == 0 else "/proc/ibmd_jax_test_run"


def _corrupt_teacher(tmp_path):
  path = tmp_path / "teacher"
  (path / "params").mkdir(parents=True)
  (path / "teacher.json").write_text(json.dumps({"trained_steps": 10}))
  return str(path)


# name: (arguments after --workdir, exit code, texts the error line names). {run}: the workdir
# (a fresh directory's 'run'), {afile}: a file, {corrupt}: a corrupt teacher.
CASES = {
    "unknown key": ([TOY, "--config.distill.critc_steps=5"], 2,
                    ["--config.distill.critc_steps is not a key of this config: distill has no "
                     "'critc_steps' (did you mean distill.critic_steps?)"]),
    # (was tests/test_faults.py's input-error test) the unknown key is named, not the known one
    "unknown key beside its known one": ([TOY, "--config.distill.rounds=60",
                                          "--config.distill.round=60"], 2,
                                         ["--config.distill.round ", "did you mean distill.rounds"]),
    "unknown section": ([TOY, "--config.distil.rounds=5"], 2, ["did you mean distill?"]),
    "bad type": ([TOY, "--config.distill.rounds=abc"], 2, ["--config.distill.rounds=abc"]),
    # (was tests/test_launch.py's unknown-key test, second command)
    "bad type of another key": ([TOY, "--config.distill.critic_steps=many"], 2,
                                ["critic_steps"]),
    "bad value": ([TOY, "--config.distill.rounds=0"], 2, ["--config.distill.rounds=0 must be"]),
    # (was tests/test_faults.py's input-error test) every bad value named in the one line
    "two bad values": ([TOY, "--config.distill.batch_size=0", "--config.checkpoint.keep=0"], 2,
                       ["distill.batch_size=0", "checkpoint.keep=0"]),
    "no config file": (["--config=configs/toy_cnd.py"], 2, ["configs/toy_cnd.py: no such config"]),
    "teacher not converted yet": ([SR4], 1, ["teachers/i2sb_sr4_bicubic/teacher does not exist"]),
    "no teacher in the workdir": ([TOY, "--config.mode=distill"], 1,
                                  ["run --config.mode=teacher (or pipeline) first"]),
    "teacher path missing": ([TOY, "--config.mode=distill", "--config.teacher.source=checkpoint",
                              "--config.teacher.checkpoint=/nonexistent/teacher"], 1,
                             ["/nonexistent/teacher does not exist"]),
    "teacher corrupt": ([TOY, "--config.mode=distill", "--config.teacher.source=checkpoint",
                         "--config.teacher.checkpoint={corrupt}"], 1,
                        ["could not read the teacher parameters"]),
    "data path missing": ([SR4 + ":tiny", "--config.mode=teacher", "--config.data.kind=folder",
                           "--config.data.path=/nonexistent/images"], 1,
                          ["data.path '/nonexistent/images' (kind='folder') does not exist"]),
    # the workdir (these replace --workdir={run})
    "workdir is a file": (["--workdir={afile}", TOY], 1, ["is a file, not a directory"]),
    # (was tests/test_faults.py's input-error test)
    "workdir not writable": ([f"--workdir={UNWRITABLE}", TOY], 1,
                             [f"workdir {UNWRITABLE} is not writable"]),
    # (was tests/test_gcs_workdir.py's unusable-workdir test; no gcsfs here) run from an empty
    # directory, which stays empty (a gs:// path taken for a local one would land there)
    "gs workdir without gcsfs": ([f"--config={os.path.join(REPO, 'configs', 'toy_cond.py')}",
                                  "--workdir=gs://bucket/run"], 2,
                                 ["gs:// needs the gcsfs package"]),
}
# run with the launcher's default --compilation_cache (workdir/jax_cache): the workdir's error is
# still the one line, not a cache error
DEFAULT_CACHE = {"workdir is a file", "workdir not writable", "gs workdir without gcsfs"}
# These go past the flags and the workdir into the run (a JAX backend, the task: 3-6 CPU-s each
# even as a fork); they repeat what a default case covers through another path.
SLOW = {"unknown section", "no teacher in the workdir", "teacher path missing", "teacher corrupt"}


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
  """{name: (CompletedProcess, its directory)} of every case this session runs, from one
  launch_all."""
  selected = [item.callspec.params["name"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")]
  cases, dirs = [], {}
  for name in selected:
    args = CASES[name][0]
    d = tmp_path_factory.mktemp("case")
    (d / "afile").write_text("x")
    subs = {"run": str(d / "run"), "afile": str(d / "afile")}
    if any("{corrupt}" in a for a in args):
      subs["corrupt"] = _corrupt_teacher(d)
    args = [a.format(**subs) for a in args]
    if not any(a.startswith("--workdir=") for a in args):
      args = [f"--workdir={d / 'run'}", *args]
    cwd = REPO  # as the README runs it
    if name == "gs workdir without gcsfs":
      cwd = d / "cwd"
      cwd.mkdir()
    if name not in DEFAULT_CACHE:
      args.append("--compilation_cache=off")
    cases.append({"args": args, "cwd": str(cwd)})
    dirs[name] = d
  return {name: (r, dirs[name]) for name, r in zip(selected, toyrun.launch_all(cases))}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_readme_command_with_a_mistake_is_one_error_line(results, name):
  _, code, texts = CASES[name]
  r, d = results[name]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert r.returncode == code, (r.returncode, r.stderr[-2000:])
  assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  for text in texts:
    assert text in errors[0], errors[0]
  assert r.stderr.rstrip().endswith(errors[0]), r.stderr[-2000:]  # the last line
  if code == 2:  # a bad key or value: stopped before any work, nothing created
    assert not (d / "run").exists()
  if name == "gs workdir without gcsfs":  # nothing written where the launcher ran
    assert not os.listdir(d / "cwd")
  if name == "workdir is a file":  # not blamed on the compilation cache
    assert "cache" not in errors[0]
