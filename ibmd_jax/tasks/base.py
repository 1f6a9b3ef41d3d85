"""The Task protocol: what the training loop and the evaluator need from a problem.

A task owns its data (training batches, a held-out evaluation set), its networks' bridge and
denoiser, and how outputs are scored. The loop and the evaluator only call these methods, so a new
task is a new class registered in `ibmd_jax.tasks.TASKS`, with no change to either.

Batches are dicts of numpy arrays holding THIS process's rows (multi-host: `sharding.host_rows`):
'x0' and 'xT' [B, ...] (teacher training; distillation reads only 'xT' and never sees 'x0'),
optional 'mask' (1 = unknown pixels) and 'label' (int32 [B]).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol

from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser, Predictor


class Scorer(Protocol):
  """Accumulates the outputs of every sampler over the evaluation set and summarises them."""

  # (metric key, column title, format) in table order; the first is the headline metric.
  columns: list

  def observe(self, batch: dict, valid: int) -> None:
    """Called once per eval batch (global device arrays) before the samplers: the baselines."""

  def add(self, name: str, out: Any, batch: dict, valid: int) -> None:
    """out: one sampler's outputs for an eval batch (a global device array); the first `valid`
    rows are real examples (the rest pad the last batch)."""

  def meta(self) -> dict:
    """Facts about the evaluation set for the results (sizes, split, ...)."""

  def header(self, results: dict) -> str:
    """The report's text above the table."""

  def plot_panels(self, results: dict) -> list:
    """[(metric key, axis label, log y-axis)] for the quality-vs-NFE plot."""

  def baselines(self) -> dict:
    """{name: (label, row)} reference rows of the table (degraded input, noise floor, ...)."""

  def summarise(self, name: str) -> dict:
    """The row of metric values of sampler `name`."""

  def artifacts(self, out_dir: str, results: dict) -> list:
    """Extra files for the report (e.g. image grids): [(title, filename, caption)]."""


class EvalData(Protocol):
  """The evaluation examples in global batches of a fixed size (the last one padded)."""

  n: int  # examples
  batch_size: int
  num_batches: int

  def valid(self, j: int) -> int:
    """Real examples in global batch j."""

  def batches(self) -> Iterator[tuple[int, dict]]:
    """(j, batch j as global numpy arrays: xT[, x0][, mask][, label])."""


class Task(Protocol):
  bridge: Bridge
  net: NetDenoiser
  conditional: bool
  exact: Optional[Predictor]  # a closed-form teacher (toys), else None
  data_channels: int  # channels of x (generator noise channels default to this)

  def example(self) -> dict:
    """{'x': a [2, ...] input for parameter shapes, optional 'label'}."""

  def train_data(self, role: str, batch_size: int, group: int = 0) -> Any:
    """A checkpointable grain IterDataset of this process's rows of global batches of
    `batch_size`; group > 0 stacks that many batches on a leading axis (one IBMD round).
    role: 'teacher' (x0, xT pairs) or 'distill' (xT only)."""

  def check_eval(self, ev) -> None:
    """Raises on bad evaluation settings (ev: config.eval as a dict), before any training."""

  def eval_data(self, ev, batch_size: int) -> EvalData:
    ...

  def scorer(self, ev, eval_data: EvalData, workdir: str, mesh) -> Scorer:
    ...

  def preview(self, ev, workdir: str, teacher_params) -> Optional[str]:
    """After teacher training: a quick look at the teacher's samples (a file), or None."""
