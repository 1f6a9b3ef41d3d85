"""The toy task: Gaussian-mixture couplings with a closed-form teacher, scored against the truth.

Batches are pure functions of (seed, step), compiled once per shape, served as grain datasets over
the step index (their position is the Orbax 'data' item like any pipeline's). Scores: the energy
distance of each sampler's outputs to the exact conditional p(x0 | xT) over held-out xT
(conditional couplings; and per-condition mode coverage), or to the data marginal p(x0)
(unconditional ones), with the Monte-Carlo noise floor of two true sample sets as the baseline.
"""
from __future__ import annotations

import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax import sharding as shd
from ibmd_jax import state as state_lib
from ibmd_jax import toy
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser
from ibmd_jax.models import build_model

_ENDLESS = 2**40  # steps: the stream never ends in practice

def _data_jit(fn=None, **jit_kw):
  """jax.jit, at LLVM -O0 when the default backend is the CPU (decided at the first call): the
  data samplers are a few random draws; XLA:CPU's LLVM at its default -O2 spends 2-5 s of CPU
  compiling each, at -O0 under 1 s, and they run in milliseconds either way (docs/benchmarks.md,
  "Run-once programs at -O0"). Every toy run compiles them once per process."""
  if fn is None:
    return functools.partial(_data_jit, **jit_kw)
  jitted = {}

  @functools.wraps(fn)
  def call(*args):
    backend = jax.default_backend()
    if backend not in jitted:
      jitted[backend] = jax.jit(fn, compiler_options=state_lib.run_once_options(backend), **jit_kw)
    return jitted[backend](*args)

  return call


@_data_jit(static_argnums=(3,))
def _teacher_batch(gmm: toy.JointGMM, seed, step, batch_size: int):
  key = jax.random.fold_in(jax.random.key(seed + 11), step)
  x0, xT, _ = gmm.sample(key, batch_size)
  return x0, xT


@_data_jit(static_argnums=(3, 4))
def _distill_xT(gmm: toy.JointGMM, seed, round_, n: int, batch_size: int):
  key = jax.random.fold_in(jax.random.key(seed + 12), round_)
  return gmm.sample_xT(key, n * batch_size).reshape(n, batch_size, -1)


def eval_set(gmm: toy.JointGMM, seed: int, num_conditions: int, samples_per_condition: int):
  """The conditional toy's held-out set from key seed + 3: xT [c, D], true samples of
  p(x0 | xT) [n, c, D], a second true set (the noise floor) and xT repeated to [n * c, D]."""
  key = jax.random.key(seed + 3)
  n, c = samples_per_condition, num_conditions
  xT = _data_jit(gmm.sample_xT, static_argnums=1)(jax.random.fold_in(key, 0), c)
  draw = _data_jit(gmm.sample_x0_given_xT, static_argnums=2)
  truth, _ = draw(jax.random.fold_in(key, 1), xT, n)
  truth2, _ = draw(jax.random.fold_in(key, 2), xT, n)
  return xT, truth, truth2, jnp.broadcast_to(xT, (n,) + xT.shape).reshape(n * c, -1)


class _OneBatch:
  """EvalData of a single global batch, with the true samples it is scored against (truth) and a
  second true set (the noise floor)."""

  def __init__(self, xT, truth, floor_set):
    self.xT = np.asarray(xT)
    self.truth, self.floor_set = truth, floor_set
    self.n = self.batch_size = len(self.xT)
    self.num_batches = 1

  def valid(self, j: int) -> int:
    del j
    return self.n

  def batches(self):
    yield 0, {"xT": self.xT}


class ToyScorer:
  """Energy distance (and mode coverage for conditional couplings) of each sampler's outputs."""

  def __init__(self, task: "ToyTask", data: _OneBatch, conditional: bool):
    self.task, self.cond = task, conditional
    truth = self.truth = data.truth
    self.floor_set = data.floor_set
    self.outputs: dict[str, np.ndarray] = {}
    self.columns = [("ed", "energy distance ↓", ".4f")]
    gmm = task.gmm
    if conditional:
      self.columns.append(("mode_tv", "mode TV ↓", ".3f"))
      self.shape = truth.shape  # [n, c, D]
      xT_c = jnp.asarray(data.xT[:truth.shape[1]])
      k = gmm.w.shape[0]

      @jax.jit
      def freqs(s):  # per condition: the fraction of samples nearest to each component's mean
        modes = gmm.mode_of(s.reshape(self.shape), xT_c[None])  # [n, c]
        return jax.nn.one_hot(modes, k).mean(0)  # [c, K]

      self._freqs = freqs
      self.truth_freq = np.asarray(freqs(truth))

  def _distance(self, s) -> float:
    if self.cond:
      return float(toy.conditional_energy_distance(jnp.asarray(s).reshape(self.shape), self.truth))
    return float(toy.energy_distance(jnp.asarray(s), self.truth))

  def _row(self, s) -> dict:
    row = {"ed": self._distance(s)}
    if self.cond:
      f = np.asarray(self._freqs(jnp.asarray(s)))
      row["mode_tv"] = float(0.5 * np.abs(f - self.truth_freq).sum(-1).mean())
      row["mode_freq"] = [round(float(v), 4) for v in f.mean(0)]
    return row

  def observe(self, batch, valid):
    del batch, valid

  def add(self, name, out, batch, valid):
    del batch
    self.outputs[name] = shd.to_host(out)[:valid]

  def meta(self):
    return {"conditional": self.cond, "samples": int(len(self.floor_set.reshape(
        -1, self.floor_set.shape[-1])))}

  def header(self, results):
    if self.cond:
      n, c = self.shape[0], self.shape[1]
      return (f"Energy distance of each sampler's outputs to the exact conditional p(x0 | xT), "
              f"averaged over {c} held-out xT with {n} samples each; mode TV: per-condition total "
              "variation of the mode frequencies to the truth's. The noise floor compares two "
              "true sample sets. s / sample: wall-clock per sample after a warm-up call.")
    return (f"Energy distance of {results['samples']} outputs over p(xT) to the data marginal "
            "p(x0); the noise floor compares two true sample sets.")

  def plot_panels(self, results):
    del results
    return [("ed", "energy distance to the true law", True)]

  def summarise(self, name):
    return self._row(self.outputs[name])

  def baselines(self):
    row = self._row(self.floor_set)
    if self.cond:
      row["true_mode_freq"] = [round(float(v), 4) for v in self.truth_freq.mean(0)]
    return {"noise_floor": ("two true sample sets (noise floor)", row)}

  def artifacts(self, out_dir, results):
    del out_dir, results
    return []


class ToyTask:
  """A toy coupling with its bridge, network denoiser and exact teacher."""

  def __init__(self, options):
    """options: ibmd_jax.options.TaskOptions."""
    self.options = options
    d = options.data
    self.gmm = toy.make_coupling(d["coupling"], int(d["dim"]))
    self.bridge = Bridge.from_config(options.bridge)
    self.conditional = bool(options.conditional)
    self.net = NetDenoiser(self.bridge, build_model(options.model, self.bridge),
                           conditional=self.conditional)
    self.exact = toy.exact_predictor(self.gmm, self.bridge, self.conditional)
    self.seed = int(options.seed)
    self.data_channels = int(d["dim"])

  def example(self):
    return {"x": np.zeros((2, self.gmm.dim), np.float32)}

  def train_data(self, role, batch_size, group=0):
    rows = shd.host_rows(batch_size)
    gmm, seed = self.gmm, self.seed
    if role == "teacher":
      def make(i):
        x0, xT = _teacher_batch(gmm, seed, i, batch_size)
        return {"x0": np.asarray(x0)[rows], "xT": np.asarray(xT)[rows]}
    elif role == "distill":
      def make(i):
        return {"xT": np.asarray(_distill_xT(gmm, seed, i, max(group, 1), batch_size))[:, rows]}
    else:
      raise ValueError(f"role must be 'teacher' or 'distill', got {role!r}")
    return grain.MapDataset.range(_ENDLESS).map(make).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))

  def check_eval(self, ev):
    ec = ev
    if int(ec["num_conditions"]) < 1 or int(ec["samples_per_condition"]) < 2:
      raise ValueError("eval.num_conditions must be >= 1 and eval.samples_per_condition >= 2")

  def eval_data(self, ev, batch_size):
    """The held-out set, drawn once (the energy distance needs every output at once: one batch)."""
    del batch_size
    ec = ev
    n, c = int(ec["samples_per_condition"]), int(ec["num_conditions"])
    if self.conditional:
      _, truth, truth2, xT_rep = eval_set(self.gmm, self.seed, c, n)
      return _OneBatch(xT_rep, truth, truth2)
    key = jax.random.key(self.seed + 3)  # unconditional: outputs over p(xT) against p(x0)
    sample = _data_jit(self.gmm.sample, static_argnums=1)
    m = n * c // 4
    x0, xT_rep, _ = sample(jax.random.fold_in(key, 0), m)
    return _OneBatch(xT_rep, sample(jax.random.fold_in(key, 1), m)[0], x0)

  def scorer(self, ev, eval_data, workdir, mesh):
    del ev, workdir, mesh
    return ToyScorer(self, eval_data, self.conditional)

  def preview(self, ev, workdir, teacher_params):
    del ev, workdir, teacher_params
    return None
