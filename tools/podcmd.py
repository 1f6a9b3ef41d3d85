"""The pod command a plan prints: launch/tpu_pod.sh with the config file, the user's own overrides
and the plan's choices, so that what runs on the pod is what was compiled.

The user's overrides are the ``--config.KEY=VALUE`` flags of the planning command (absl's argv),
less the ones that only concern planning (``mode``, ``aot.*``) and the ones the plan chooses (it
sets them itself). The plan's choices are the mesh, remat, the batch, and — for the round — the
frozen teacher's dtype, the microbatches and the split, always written out (so the pod runs the
program that was compiled even where it equals the config's default), then
``--config.mode=distill`` for a round plan (``teacher`` for a teacher-step plan): the pod runs the
program the plan compiled and nothing else.
"""
from __future__ import annotations

import shlex
import sys
from typing import Optional, Sequence

PLANNING_ONLY = ("mode", "aot.")
MODE_OF = {"round": "distill", "teacher_step": "teacher"}


def config_file(argv: Optional[Sequence[str]] = None) -> Optional[str]:
  """The --config=FILE[:ARG] of the planning command."""
  argv = list(sys.argv if argv is None else argv)
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def user_overrides(argv: Optional[Sequence[str]] = None, chosen: Sequence[str] = ()) -> list[str]:
  """The planning command's --config.KEY=VALUE flags a pod run needs: all but the planning-only
  ones and those whose key the plan sets (`chosen`: KEYs)."""
  argv = list(sys.argv if argv is None else argv)
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    i += 1
    if not a.startswith("--config."):
      continue
    if "=" in a:
      key, value = a[len("--config."):].split("=", 1)
    elif i < len(argv):  # --config.key value
      key, value = a[len("--config."):], argv[i]
      i += 1
    else:
      continue
    if key == "mode" or key.startswith("aot.") or key in chosen:
      continue
    out.append(f"--config.{key}={value}")
  return out


def plan_overrides(config, program: str, chips: int, fsdp: int, remat: Optional[str],
                   per_chip: int, batch_key: str) -> list[str]:
  """The plan's choices as overrides, every one that decides the compiled program."""
  out = [f"--config.mesh.data={chips // fsdp}", f"--config.mesh.fsdp={fsdp}"]
  if remat is not None and "remat" in config.model:
    out.append(f"--config.model.remat={remat}")
  out.append(f"--config.{batch_key}={per_chip * chips}")
  if program == "round":
    d = config.distill
    out += [f"--config.distill.teacher_dtype={d.get('teacher_dtype', 'float32')}",
            f"--config.distill.microbatches={int(d.get('microbatches', 1))}",
            f"--config.distill.split_round={bool(d.get('split_round', False))}"]
  elif program == "teacher_step":
    out.append(f"--config.teacher.microbatches={int(config.teacher.get('microbatches', 1))}")
  if program in MODE_OF:
    out.append(f"--config.mode={MODE_OF[program]}")
  return out


def pod_command(config_path: str, topology: str, overrides: Sequence[str]) -> str:
  """The launch/tpu_pod.sh line: placeholders for the slice, zone and bucket, then the config
  file and the overrides (shell-quoted where they need it)."""
  slice_name = topology.replace(":", "-")
  return (f"TPU_NAME=<{slice_name} slice> ZONE=<zone> WORKDIR=gs://<bucket>/<run> "
          f"launch/tpu_pod.sh {shlex.quote(config_path)} "
          + " ".join(shlex.quote(o) for o in overrides))


def keys(overrides: Sequence[str]) -> list[str]:
  return [o[len("--config."):].split("=", 1)[0] for o in overrides]
