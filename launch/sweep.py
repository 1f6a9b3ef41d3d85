r"""Expands a grid of config overrides into runs with distinct workdirs.

  python -m launch.sweep --config=configs/toy_cond.py --root=/tmp/sweep \
      --grid="distill.critic_steps=1,5" --grid="distill.z_channels=0,2" [--run] [-- extra overrides]

Without --run it prints one launcher command per grid point (paste them into any scheduler, or a
pod script); with --run it runs them here, one after another. Each workdir is named after its
overrides, e.g. /tmp/sweep/critic_steps=1,z_channels=0.
"""
import itertools
import os
import shlex
import subprocess
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file passed to launch.main.")
_ROOT = flags.DEFINE_string("root", None, "Directory under which each run gets its workdir.")
_GRID = flags.DEFINE_multi_string("grid", [], "key=v1,v2,... (repeat for more axes).")
_RUN = flags.DEFINE_bool("run", False, "Run the commands here in sequence instead of printing.")
flags.mark_flags_as_required(["config", "root"])


def expand(grid: list[str]) -> list[dict]:
  """['a.b=1,2', 'c=x,y'] -> [{'a.b': '1', 'c': 'x'}, ...] (the cartesian product, in order)."""
  axes = []
  for item in grid:
    if "=" not in item:
      raise ValueError(f"grid entry {item!r} must look like key=v1,v2")
    key, values = item.split("=", 1)
    vals = [v for v in values.split(",") if v != ""]
    if not vals:
      raise ValueError(f"grid entry {item!r} has no values")
    axes.append([(key.strip(), v.strip()) for v in vals])
  return [dict(point) for point in itertools.product(*axes)]


def run_name(point: dict) -> str:
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "default"


def commands(config: str, root: str, grid: list[str], extra: list[str]) -> list[list[str]]:
  out, names = [], set()
  for point in expand(grid):
    name = run_name(point)
    if name in names:  # two keys with the same last component: use the full key path
      name = ",".join(f"{k}={v}" for k, v in point.items())
    names.add(name)
    cmd = [sys.executable, "-m", "launch.main", f"--config={config}",
           f"--workdir={os.path.join(root, name)}"]
    cmd += [f"--config.{k}={v}" for k, v in point.items()] + list(extra)
    out.append(cmd)
  return out


def main(argv):
  cmds = commands(_CONFIG.value, _ROOT.value, _GRID.value, argv[1:])
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if _RUN.value:
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  app.run(main)
