r"""ibmd_jax launcher.

  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/run \
      [--config.distill.critic_steps=1 ...]

Every option of the config can be overridden with --config.<key>=<value>; an unknown key or a
value of the wrong type stops the run before any work, naming the key (exit 2).

--config=<file>[:<arg>] is loaded once (`load_config`), before absl parses the flags: the
overrides are checked against its keys, then parsed by absl against it as a ConfigDict flag
(ml_collections' DEFINE_config_dict), with the types of its values.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from launch import distributed  # --coordinator_address, --num_processes, --process_id, timeouts

_CONFIG = None  # the config's flag holder, defined by parse_flags once the file is loaded
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", "workdir",
    "Persistent XLA compilation cache, so that a restart loads the compiled programs instead of "
    "compiling again: 'workdir' (<workdir>/jax_cache), 'user' ($IBMD_JAX_CACHE or "
    "~/.cache/ibmd_jax/jax_cache), a directory, or 'off'. Off in compile mode (libtpu's "
    "compile-only client cannot load cached TPU programs).")
flags.mark_flags_as_required(["workdir"])


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
  compile_fn = None
  if _CONFIG.value.get("mode") == "compile":  # the compile tooling, outside the package
    from tools import aot
    compile_fn = aot.run
  try:
    distributed.barrier("start")  # every process imported and set up: the skew is small now
    run.run(_CONFIG.value, _WORKDIR.value, compile_fn=compile_fn)
  except Exception as e:  # noqa: BLE001 - another process of the run died: one line, exit now
    if distributed.peer_lost(e):
      distributed.exit_peer_lost(e)
    raise


def load_config(spec: str):
  """get_config([arg]) of a config file, spec = '<file>[:<arg>]' (as ml_collections' flag)."""
  import importlib.util
  import os

  from ibmd_jax.errors import ConfigError

  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={path}: no such config file (configs/ holds them)")
  module_spec = importlib.util.spec_from_file_location("_ibmd_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def unknown_key(config, key: str):
  """None when `key` (a.b.c) is a key of config, else why not, with the closest key."""
  import difflib

  node, done = config, []
  for part in key.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join(done) or "the config"
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f" (did you mean {'.'.join(done + close)}?)" if close else ""
      return f"--config.{key} is not a key of this config: {where} has no {part!r}{hint}"
    node, done = node[part], done + [part]
  return None


def _split_config_flag(argv):
  """(the --config value or '', argv without it)."""
  spec, rest, skip = "", [argv[0]], False
  for i, a in enumerate(argv[1:], 1):
    if skip:
      skip = False
    elif a in ("--config", "-config") and i + 1 < len(argv):
      spec, skip = argv[i + 1], True
    elif a.startswith(("--config=", "-config=")):
      spec = a.split("=", 1)[1]
    else:
      rest.append(a)
  return spec, rest


def parse_flags(argv):
  """Loads --config once, checks every --config.<key> override against it, then parses the flags
  (absl, with the overrides' types from the config). A bad key or value: one `error:` line, 2."""
  global _CONFIG
  from ibmd_jax.errors import ConfigError, exit_with

  spec, rest = _split_config_flag(argv)
  if any(a in ("--help", "-h", "--helpfull", "--helpshort") for a in rest) and not spec:
    return flags.FLAGS(rest)
  if not spec:
    exit_with(ConfigError("--config=<file> is required (configs/ holds them)"))
  try:
    config = load_config(spec)
  except ConfigError as e:
    exit_with(e)
  for a in rest[1:]:
    name = a.lstrip("-").split("=", 1)[0]
    if name.startswith(("config.", "noconfig.")):
      why = unknown_key(config, name.split(".", 1)[1])
      if why:
        exit_with(ConfigError(f"{why}; configs/base.py lists every key"))
  _CONFIG = config_flags.DEFINE_config_dict("config", config, "The config (--config=<file>).",
                                            lock_config=True, sys_argv=rest)
  try:
    return flags.FLAGS(rest)
  except flags.Error as e:  # a value of the wrong type, a missing --workdir
    exit_with(ConfigError(f"{e} (python -m launch.main --helpfull lists the flags)"))


def run_cli():
  """app.run, with one `error:` line (and ibmd_jax.errors' exit code) instead of a traceback for
  what the user has to fix: a bad config key or value (2), a RunError (a workdir, teacher, data
  path or checkpoint to fix; its exit code)."""
  from ibmd_jax.errors import RunError, exit_with

  try:
    app.run(main, flags_parser=parse_flags)
  except RunError as e:
    exit_with(e)


if __name__ == "__main__":
  run_cli()
