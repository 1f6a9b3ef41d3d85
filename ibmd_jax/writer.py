"""Metrics of a run: JSON lines in <workdir>/metrics.jsonl, TensorBoard events and a console line.

Values arrive as host numbers (the training loop reads a step's metrics after the next step has
been dispatched, so writing never waits for the device). Only process 0 writes.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from ibmd_jax import paths
from ibmd_jax.errors import DISK_ERRNOS, DiskFullError


def _summary_writer():
  """tensorboardX's SummaryWriter, or None. Imported by process 0 only, when it opens the writer:
  tensorboardX imports torch when torch is installed (2.5 s of a process's 7.6 s of imports), and
  every other process of a multi-process run would pay it for nothing."""
  try:  # TensorBoard event files without TensorFlow; optional
    from tensorboardX import SummaryWriter
  except ImportError:  # pragma: no cover - tensorboardX is an install requirement
    return None
  return SummaryWriter


class MetricWriter:
  """Appends {"mode", "step", metrics...} rows to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = paths.join(workdir, "metrics.jsonl")
    self.active = jax.process_index() == 0
    self.tb = None
    if self.active:
      paths.makedirs(workdir)
      SummaryWriter = _summary_writer()
      if SummaryWriter is None:
        logging.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")
      elif paths.is_remote(workdir):
        logging.info("TensorBoard events are written in local workdirs only: the rows are in %s",
                     self.path)
      else:
        self.tb = SummaryWriter(os.path.join(paths.resolve(workdir), "tensorboard"),
                                flush_secs=10)

  def close(self):
    if self.tb is not None:
      self.tb.close()
      self.tb = None

  def supersede(self, modes, after_step: int) -> int:
    """Drops the rows of `modes` logged after `after_step` (by a run that was interrupted and is
    now resumed from after_step) from metrics.jsonl, so that it reads like one uninterrupted run;
    they are appended to metrics.superseded.jsonl. Returns how many rows moved."""
    if not self.active or not paths.exists(self.path):
      return 0
    keep, moved = [], []
    for line in paths.read_text(self.path).splitlines(keepends=True):
      try:
        row = json.loads(line)
      except ValueError:  # a line cut by a kill: superseded too
        moved.append(line if line.endswith("\n") else line + "\n")
        continue
      (moved if row.get("mode") in modes and row.get("step", 0) > after_step else keep).append(
          line)
    if not moved:
      return 0
    paths.append_text(self.path[:-len(".jsonl")] + ".superseded.jsonl", "".join(moved))
    paths.write_text(self.path, "".join(keep))  # whole or not at all
    return len(moved)

  def write(self, mode: str, step: int, metrics: dict, echo: bool = True):
    row = {"mode": mode, "step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    if not self.active:
      return
    try:
      paths.append_text(self.path, json.dumps(row) + "\n")
    except OSError as e:
      if e.errno in DISK_ERRNOS:
        raise DiskFullError(f"could not append to {self.path} ({os.strerror(e.errno)}): free some "
                            "space and run the same command again; the checkpoints are intact"
                            ) from None
      raise
    if self.tb is not None:
      for k, v in row.items():
        if k not in ("mode", "step"):
          self.tb.add_scalar(f"{mode}/{k}", v, int(step))
    if echo:
      print(f"[{mode}] step {step}: " + " ".join(
          f"{k}={v:.4g}" for k, v in row.items() if k not in ("mode", "step")), flush=True)
