"""Environments for the launcher subprocesses that the tests start."""
import os


def one_device(**extra) -> dict:
  """This process's environment for a subprocess with one CPU device, as a user's run on a laptop:
  tests/conftest.py's 8 fake devices are dropped from XLA_FLAGS, its other flags (the suite's
  compile settings) are kept."""
  env = dict(os.environ, **extra)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env
