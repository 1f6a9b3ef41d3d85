r"""ibmd_jax launcher.

  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/run \
      [--config.distill.critic_steps=1 ...]

Every option of the config can be overridden with --config.<key>=<value>; an unknown key or a
value of the wrong type stops the run before any work, naming the key.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from launch import distributed  # --coordinator_address, --num_processes, --process_id, timeouts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", "workdir",
    "Persistent XLA compilation cache, so that a restart loads the compiled programs instead of "
    "compiling again: 'workdir' (<workdir>/jax_cache), 'user' ($IBMD_JAX_CACHE or "
    "~/.cache/ibmd_jax/jax_cache), a directory, or 'off'. Off in compile mode (libtpu's "
    "compile-only client cannot load cached TPU programs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ibmd_jax import checks

  checks.check_config(_CONFIG.value)  # before anything is written, compiled or even imported
  checks.check_workdir(_WORKDIR.value)

  import jax  # imported after flag parsing so that --help is fast

  from ibmd_jax import compile_cache, run
  # Before the first compilation of the process: JAX reads the cache settings once.
  setting = _CACHE.value
  if _CONFIG.value.get("mode") == "compile":
    # libtpu's compile-only client writes cache entries it cannot read back ("PjRtCompiler must
    # be constructed with a Client to call Deserialize"): a rerun compiles anyway, so writing
    # them only costs disk (250-380 MB per full-size round) and time.
    setting = "off"
  cache_dir = compile_cache.enable(compile_cache.resolve(setting, _WORKDIR.value))

  if _CONFIG.value.get("distributed", False):
    # Multi-host (TPU pod slice, multi-node GPU): must run before anything touches a device.
    # On TPU and SLURM/Open MPI clusters the coordinator and process ids are auto-detected;
    # elsewhere the launcher's flags (or JAX_* variables) give them (launch/distributed.py).
    distributed.initialize()

  # Orbax logs every save at INFO; keep the console to our progress lines unless asked.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  logging.warning("JAX %s, process %d/%d, devices: %s, compilation cache: %s", jax.__version__,
                  jax.process_index(), jax.process_count(), jax.devices(), cache_dir or "off")
  try:
    distributed.barrier("start")  # every process imported and set up: the skew is small now
    run.run(_CONFIG.value, _WORKDIR.value)
  except Exception as e:  # noqa: BLE001 - another process of the run died: one line, exit now
    if distributed.peer_lost(e):
      distributed.exit_peer_lost(e)
    raise


def _unknown_override(argv) -> str:
  """The first --config.<key> override whose key the config file does not have ('' if none)."""
  import difflib
  import importlib.util

  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  if not path:
    return ""
  try:
    spec = importlib.util.spec_from_file_location("_ibmd_config", path.split(":")[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*path.split(":")[1:2])
  except Exception:  # noqa: BLE001 - the flag parser reports a config that does not load
    return ""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    node, key = config, arg[len("--config."):].split("=")[0]
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        close = difflib.get_close_matches(part, list(node.keys()) if hasattr(node, "keys") else [])
        return key + (f" (did you mean {key.rsplit(part, 1)[0]}{close[0]}?)" if close else "")
      node = node[part]
  return ""


def run_cli():
  """app.run, with one line instead of a traceback for an unknown config key or a RunError (a
  config value, workdir, checkpoint or teacher to fix; ibmd_jax.errors lists the exit codes)."""
  import sys

  import os

  from ibmd_jax.errors import DiskFullError, RunError

  bad = _unknown_override(sys.argv[1:])
  if bad:
    sys.stderr.write(f"error: --config.{bad} is not a key of this config (configs/base.py "
                     "lists every key)\n")
    sys.exit(2)
  try:
    app.run(main)
  except RunError as e:
    sys.stderr.write(f"error: {e}\n")
    if isinstance(e, DiskFullError):
      # Skip the interpreter's teardown, where the failed save's writer threads would print a
      # traceback each on their closed event loops; remove what their last writes left.
      import time

      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the error line above is the last one
      time.sleep(1.0)
      e.cleanup()
      os._exit(e.exit_code)
    sys.exit(e.exit_code)
  except AttributeError as e:
    overrides = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    bad = [o for o in overrides if o.split(".")[-1] in str(e)]
    if not bad:
      raise
    sys.stderr.write(f"error: {bad[0]} is not a key of this config\n")
    sys.exit(2)


if __name__ == "__main__":
  run_cli()
