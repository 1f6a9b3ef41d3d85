"""The config is read once: below the launcher layer (`ibmd_jax.run`, `ibmd_jax.options`) modules
take typed options or plain arguments. Followed call by call from run.run, a ConfigDict reaches
only the modules listed here (before issue 33: 11 modules statically, 13 at run time)."""
import os
import sys

import ml_collections
import pytest

from configs import toy_cond
from ibmd_jax import run as runner
from tests import config_trace
from tests.test_launch import _tiny

# The launcher layer (run: config.json; options: the typed options) and its checks of the values.
ALLOWED = {"ibmd_jax.run", "ibmd_jax.options", "ibmd_jax.checks"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_reaches_only_the_launcher_layer_statically():
  reached = config_trace.config_modules(REPO)
  assert reached[0] == "ibmd_jax.run" and "ibmd_jax.options" in reached, reached
  assert set(reached) <= ALLOWED, sorted(set(reached) - ALLOWED)


def config_modules(fn, *args):
  """The ibmd_jax modules whose functions get a ConfigDict (as an argument or `self` attribute)
  while fn(*args) runs, in the order first reached."""
  reached = []

  def holds_config(value):
    return isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict))

  def profile(frame, event, arg):
    del arg
    if event != "call":
      return
    module = frame.f_globals.get("__name__", "")
    if not module.startswith("ibmd_jax") or module in reached:
      return
    code = frame.f_code
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    values = [frame.f_locals.get(n) for n in names]
    if names and names[0] == "self":
      values += list(getattr(values[0], "__dict__", {}).values())
    if any(holds_config(v) for v in values):
      reached.append(module)

  sys.setprofile(profile)
  try:
    fn(*args)
  finally:
    sys.setprofile(None)
  return reached


@pytest.mark.slow  # a whole tiny toy pipeline (teacher, distillation, evaluation) under a profiler
def test_config_reaches_only_the_launcher_layer_at_run_time(tmp_path):
  c = _tiny(toy_cond, rounds=2)
  c.teacher.steps = 4
  reached = config_modules(runner.run, c, str(tmp_path / "run"))
  print("modules that get the ConfigDict:", reached)
  assert len(reached) <= 6, reached
  assert set(reached) <= ALLOWED, sorted(set(reached) - ALLOWED)
