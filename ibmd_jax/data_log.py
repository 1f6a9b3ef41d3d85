"""A test / debugging hook: which examples each process fed at each step.

With IBMD_JAX_DATA_LOG=<prefix> set, the training loop appends one JSON line per step to
<prefix>.p<process index>.jsonl: {"loop", "step", "rows": [a short hash of each row this process
fed]}. tests/test_multiprocess.py checks from it that the processes of a multi-process run feed
disjoint rows whose union is the 1-process run's batch (nothing read twice or skipped), and that a
restart continues each process's stream. Off (and free) when the variable is unset.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

ENV = "IBMD_JAX_DATA_LOG"


def row_hashes(local: dict, batch_axis: int) -> list[str]:
  """One hash per row (along batch_axis) over every key's values of that row."""
  keys = sorted(local)
  n = np.asarray(local[keys[0]]).shape[batch_axis]
  out = []
  for r in range(n):
    h = hashlib.sha1()
    for k in keys:
      h.update(np.ascontiguousarray(np.take(np.asarray(local[k]), r, axis=batch_axis)).tobytes())
    out.append(h.hexdigest()[:16])
  return out


def record(loop_name: str, step: int, local: dict, batch_axis: int) -> None:
  prefix = os.environ.get(ENV)
  if not prefix:
    return
  import jax

  line = {"loop": loop_name, "step": int(step), "rows": row_hashes(local, batch_axis)}
  with open(f"{prefix}.p{jax.process_index()}.jsonl", "a") as f:
    f.write(json.dumps(line) + "\n")
