"""Image tasks: ADM UNet teachers on grain pipelines of (clean, degraded) pairs, and their evaluation.

The run loops of ``ibmd_jax.train`` drive these through the ``Problem`` interface; this module
supplies the image batches (with iterator state for exact resume), and the evaluation (`evaluate`,
docs/evaluation.md): the teacher at eval.teacher_nfes and the student at eval.student_steps on
held-out images, sampled in batches sharded over the device mesh; PSNR / SSIM against the clean
reference, SWD and FD / KID on weight-free features, FID / KID / IS with the FID Inception and
classifier accuracy with a ResNet-50 when their weight files are given; time per image; image
grids (input | student | teacher | reference), a report and a quality-vs-NFE/time plot.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser
from ibmd_jax.models import build_model
from ibmd_jax.train import Problem


def _data_cfg(config) -> dict:
  return dict(config.data)


class ImageProblem(Problem):
  """(x0, xT[, mask][, label]) batches from ``ibmd_jax.data`` pipelines."""

  def __init__(self, config):
    self.config = config
    self.bridge = Bridge.from_config(config.bridge)
    self.conditional = bool(config.conditional)
    self.net = NetDenoiser(self.bridge, build_model(config.model), conditional=self.conditional)
    self.exact = None
    self.size = int(config.data.image_size)
    self.channels = int(config.data.get("channels", 3))
    self.num_classes = config.model.get("num_classes", None)
    self._its: dict[str, Any] = {}
    self._pending_state: dict = {}

  def example(self):
    return np.zeros((2, self.size, self.size, self.channels), np.float32)

  def example_label(self):
    return None if not self.num_classes else np.zeros((2,), np.int32)

  def _iterator(self, role: str, batch_size: int):
    if role not in self._its:
      from ibmd_jax import data

      ds = data.make_dataset(_data_cfg(self.config), "train", batch_size=batch_size,
                             seed=int(self.config.seed) + (0 if role == "teacher" else 1),
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             num_workers=int(self.config.data.get("num_workers", 0)))
      it = iter(ds)
      if role in self._pending_state:
        it.set_state(self._pending_state.pop(role))
      self._its[role] = it
    return self._its[role]

  def _next(self, role: str, batch_size: int) -> dict:
    """A global batch: this process's slice, tiled to the global size for the loops' slicing."""
    pc = jax.process_count()
    batch = next(self._iterator(role, batch_size // pc))
    batch = {k: np.asarray(v) for k, v in batch.items() if k in ("x0", "xT", "mask", "label")}
    if pc > 1:  # the loops take rows [pi*bs/pc, (pi+1)*bs/pc): place ours there
      batch = {k: np.concatenate([v] * pc, axis=0) for k, v in batch.items()}
    if "label" in batch:
      batch["label"] = batch["label"].astype(np.int32)
    if not self.num_classes:
      batch.pop("label", None)
    elif "label" not in batch:  # a class-conditional network on unlabelled data
      batch["label"] = np.full((len(batch["xT"]),), self._fixed_label(), np.int32)
    return batch

  def _fixed_label(self) -> int:
    fixed = int(self.config.data.get("fixed_label", -1))
    if not 0 <= fixed < int(self.num_classes):
      raise ValueError(
          f"the network is class-conditional (model.num_classes={self.num_classes}) but the data "
          f"has no labels: set data.class_conditional=True on a labelled dataset, or "
          f"data.fixed_label to a class in [0, {self.num_classes}) (got {fixed})")
    return fixed

  def teacher_batch(self, step, batch_size):
    del step  # the iterator's own position (checkpointed) defines the batch
    return self._next("teacher", batch_size)

  def distill_batches(self, round_, n, batch_size):
    del round_
    batches = [self._next("distill", batch_size) for _ in range(n)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

  def data_state(self) -> dict:
    out = {}
    for role, it in self._its.items():
      state = it.get_state()
      out[role] = state.decode("latin-1") if isinstance(state, bytes) else state
    return out

  def set_data_state(self, state: dict) -> None:
    self._pending_state = dict(state or {})
    self._its = {}


def make_problem(config) -> ImageProblem:
  return ImageProblem(config)


# ---------------------------------------------------------------------- evaluation
WEIGHT_FREE_METRICS = ("psnr", "ssim", "swd", "fd_pixel", "kid_pixel")
INCEPTION_METRICS = ("fid", "kid", "is")
METRICS = WEIGHT_FREE_METRICS + INCEPTION_METRICS + ("ca",)
# (column title, format) of each reported number, in table order
_COLUMNS = {"psnr": ("PSNR ↑", ".2f"), "ssim": ("SSIM ↑", ".4f"), "swd": ("SWD ↓", ".4g"),
            "fd_pixel": ("FD pix ↓", ".4g"), "kid_pixel": ("KID pix ↓", ".3g"),
            "fid": ("FID ↓", ".2f"), "kid": ("KID ↓", ".4g"), "is": ("IS ↑", ".2f"),
            "ca": ("CA ↑", ".3f")}
_PLOT_LABELS = {"psnr": "PSNR, dB (higher is better)", "swd": "SWD (lower is better)",
                "fid": "FID (lower is better)", "fd_pixel": "FD, pixel features (lower is better)"}
# The teacher NFE shown in the grids: best by the first of these that was measured.
_BEST_BY = (("fid", min), ("swd", min), ("fd_pixel", min), ("kid", min), ("kid_pixel", min),
            ("psnr", max), ("ssim", max))


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  split: str
  metrics: tuple
  teacher_nfes: tuple
  student_steps: tuple
  num_images: int
  batch_size: int
  grid_rows: int
  inception_path: str
  resnet_path: str
  swd_images: int
  kid_subset_size: int
  is_splits: int


def eval_options(config) -> EvalOptions:
  """config.eval with defaults for keys an older config lacks; bad values and missing weight files
  are errors naming them (train._run calls this before any training in eval / pipeline mode)."""
  ec = config.eval
  get = lambda k, d: ec.get(k, d) if k in ec else d  # noqa: E731
  metrics = tuple(dict.fromkeys(str(m) for m in get("metrics", WEIGHT_FREE_METRICS)))
  bad = [m for m in metrics if m not in METRICS]
  if bad:
    raise ValueError(f"eval.metrics has unknown {bad}; choose from {list(METRICS)}")
  if not metrics:
    raise ValueError(f"eval.metrics is empty; choose from {list(METRICS)}")
  o = EvalOptions(
      split=str(get("split", "test")), metrics=metrics,
      teacher_nfes=tuple(int(n) for n in ec.teacher_nfes),
      student_steps=tuple(int(n) for n in ec.student_steps),
      num_images=int(ec.num_images), batch_size=int(ec.batch_size),
      grid_rows=int(get("grid_rows", 8)), inception_path=str(get("inception_path", "") or ""),
      resnet_path=str(get("resnet_path", "") or ""), swd_images=int(get("swd_images", 1024)),
      kid_subset_size=int(get("kid_subset_size", 1000)), is_splits=int(get("is_splits", 10)))
  if o.split not in ("test", "train"):
    raise ValueError(f"eval.split must be 'test' (held-out images) or 'train', got {o.split!r}")
  if not o.teacher_nfes or min(o.teacher_nfes) < 1 or (o.student_steps and min(o.student_steps) < 1):
    raise ValueError(f"eval.teacher_nfes must be a non-empty list of NFEs >= 1 and "
                     f"eval.student_steps of steps >= 1; got {o.teacher_nfes}, {o.student_steps}")
  if o.batch_size < 1:
    raise ValueError(f"eval.batch_size must be >= 1, got {o.batch_size}")
  if o.num_images < 1 and o.split == "train":
    raise ValueError("eval.num_images <= 0 (the whole split) is only possible for split='test'")
  if o.swd_images < 2:
    raise ValueError(f"eval.swd_images must be >= 2, got {o.swd_images}")
  from ibmd_jax.eval import inception, resnet

  need = [m for m in metrics if m in INCEPTION_METRICS]
  if need and not o.inception_path:
    raise ValueError(f"eval.metrics {need} need the FID Inception network: set "
                     f"eval.inception_path to its weights file. {inception.MISSING_HINT}")
  if "ca" in metrics and not o.resnet_path:
    raise ValueError("eval.metrics 'ca' needs a ResNet-50 classifier: set eval.resnet_path to its "
                     f"weights file. {resnet.MISSING_HINT}")
  for used, path, key, hint in ((need, o.inception_path, "inception_path", inception.MISSING_HINT),
                                ("ca" in metrics, o.resnet_path, "resnet_path", resnet.MISSING_HINT)):
    if used and not os.path.isfile(path):
      raise FileNotFoundError(f"weights file not found: {path!r} (eval.{key}). {hint}")
  return o


class EvalSet:
  """The evaluation examples in global batches of `batch_size`: this process's rows of each.

  split 'test': `num_images` examples spread evenly over the held-out split (the selection of
  ``data.load_eval_set``; num_images <= 0 takes all of it); 'train': the first `num_images`
  examples of the shuffled training stream. Each example is a pure function of (seed, index), so
  every process count and batch size sees the same images. The last batch is padded by repeating
  its last example (one compiled shape); `valid` counts the real ones.
  """

  def __init__(self, config, split: str, num_images: int, batch_size: int, seed: int):
    from ibmd_jax import data

    self.cfg = _data_cfg(config)
    self.ds = data._map_dataset(self.cfg, split, seed)  # random access, examples built lazily
    total = len(self.ds)
    if split == "test":
      n = total if num_images <= 0 else num_images
      if n > total:
        raise ValueError(f"eval.num_images={n} but the test split has {total} examples "
                         f"(data.kind={self.cfg['kind']!r}, image_size={self.cfg['image_size']}); "
                         f"lower eval.num_images")
      self.indices = np.linspace(0, total - 1, n).round().astype(int)
    else:
      self.indices = np.arange(num_images)
    self.n, self.batch_size = len(self.indices), int(batch_size)
    self.num_batches = -(-self.n // self.batch_size)

  def valid(self, j: int) -> int:
    return min(self.batch_size, self.n - j * self.batch_size)

  def local_batch(self, j: int) -> dict:
    """This process's rows of global batch j as numpy arrays (x0, xT[, mask][, label])."""
    rows = self.indices[j * self.batch_size:(j + 1) * self.batch_size]
    rows = np.concatenate([rows, np.repeat(rows[-1:], self.batch_size - len(rows))])
    pi, pc = jax.process_index(), jax.process_count()
    rows = rows[pi * self.batch_size // pc:(pi + 1) * self.batch_size // pc]
    examples = [self.ds[int(i)] for i in rows]
    out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    if "label" in out:
      out["label"] = out["label"].astype(np.int32)
    return out

  def batches(self):
    """Yields (j, local batch), loading batch j + 1 in a thread while j is evaluated."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
      nxt = pool.submit(self.local_batch, 0)
      for j in range(self.num_batches):
        cur = nxt.result()
        if j + 1 < self.num_batches:
          nxt = pool.submit(self.local_batch, j + 1)
        yield j, cur

  def name(self, split: str, seed: int) -> str:
    """Identifies the reference images (for the reference-statistics cache)."""
    c = self.cfg
    src = c.get("tfds_name") or os.path.basename(os.path.normpath(c.get("path") or "")) or ""
    parts = [c["kind"], src, split, f"{c['image_size']}px", f"c{c.get('channels', 3)}",
             f"n{self.n}", f"seed{seed}"]
    return "-".join("".join(ch if ch.isalnum() or ch in "._" else "_" for ch in str(p))
                    for p in parts if p != "")


def _to_host(tree):
  """(A pytree of) possibly multi-process global arrays as numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils

  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _model_label(problem: ImageProblem, batch: dict, size: int):
  """The class labels the network is given (class-conditional teachers only)."""
  if not problem.num_classes:
    return None
  if "label" in batch:
    return batch["label"]
  return np.full((size,), problem._fixed_label(), np.int32)  # as in training


class _Accumulator:
  """Per-image metrics, features and the first images of one set (a sampler, input or reference)."""

  def __init__(self, keep: int):
    self.keep = keep
    self.values: dict[str, list] = {}
    self.images: list[np.ndarray] = []
    self.kept = 0
    self.seconds: list[float] = []

  def add(self, name: str, v: np.ndarray):
    self.values.setdefault(name, []).append(np.asarray(v))

  def add_images(self, x: np.ndarray):
    if self.kept < self.keep:
      take = to_uint8(x[:self.keep - self.kept])
      self.images.append(take)
      self.kept += len(take)

  def get(self, name: str) -> Optional[np.ndarray]:
    v = self.values.get(name)
    return None if v is None else np.concatenate(v, axis=0)

  def kept_images(self) -> np.ndarray:
    return np.concatenate(self.images, axis=0)


def _from_uint8(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 127.5 - 1.0


def _pixel_scales(size: int) -> tuple:
  """pixel_features scales whose pooled image still fits its 5x5 filters."""
  return tuple(s for s in (1, 2, 4) if size // s >= 5)


def evaluate(config, workdir: str, problem: ImageProblem, teacher_params, gen_params, writer,
             mesh=None) -> dict:
  """Teacher at eval.teacher_nfes and student at eval.student_steps on the eval set.

  Sampling, the paired metrics and the feature networks run sharded over `mesh` (default: the
  training mesh of config.mesh): batches split over its devices, parameters sharded as in
  training. Writes <workdir>/eval/metrics.json, report.md, quality_vs_nfe.png and the grids, and
  the numbers to `writer`. gen_params None evaluates the teacher alone.
  """
  from ibmd_jax import sharding as shd
  from ibmd_jax.eval import inception, metrics, resnet
  from ibmd_jax.samplers import sample
  from ibmd_jax.train import make_ibmd, make_mesh

  opts = eval_options(config)
  want = set(opts.metrics)
  # Weight files are read before any sampling, so a missing file costs nothing.
  inc_vars = inception.load_inception(opts.inception_path) if want & set(INCEPTION_METRICS) else None
  res_vars = resnet.load_resnet50(opts.resnet_path) if "ca" in want else None
  mesh = make_mesh(config) if mesh is None else mesh
  shd.check_batch(mesh, opts.batch_size, "eval.batch_size")
  seed = int(config.seed)
  evset = EvalSet(config, opts.split, opts.num_images, opts.batch_size,
                  seed if opts.split == "test" else seed + 7)
  first = evset.local_batch(0)
  size = int(first["x0"].shape[1])
  if "ssim" in want and min(first["x0"].shape[1:3]) < 11:
    raise ValueError(f"SSIM needs images of at least 11x11, these are {first['x0'].shape[1:3]}: "
                     "drop 'ssim' from eval.metrics")
  if "ca" in want and "label" not in first:
    raise ValueError("eval.metrics 'ca' (classifier accuracy) needs class labels: set "
                     "data.class_conditional=True on a dataset that has them (tfds imagenet2012, "
                     "a folder with one subfolder per class)")
  ca_labels = "ca" in want

  rep, bsh = shd.replicated(mesh), shd.batch_sharding(mesh)
  put = lambda tree: jax.device_put(tree, shd.state_shardings(mesh, tree))  # noqa: E731
  samplers = []  # (group, count, jitted fn, params, key)
  key = jax.random.key(seed + 3)
  t_params = put(teacher_params)
  t_sh = shd.state_shardings(mesh, t_params)
  for nfe in opts.teacher_nfes:
    def t_fn(params, batch, k, nfe=nfe):
      return sample(problem.net, params, problem.bridge, batch["xT"], k, nfe,
                    label=batch.get("label"), mask=batch.get("mask"))
    samplers.append(("teacher", nfe, jax.jit(t_fn, in_shardings=(t_sh, bsh, rep), out_shardings=bsh),
                     t_params, jax.random.fold_in(key, nfe)))
  if gen_params is not None:
    ib = make_ibmd(config, problem)
    g_params = put(gen_params)
    g_sh = shd.state_shardings(mesh, g_params)
    for steps in opts.student_steps:
      def g_fn(params, batch, k, steps=steps):
        return ib.generate(params, batch["xT"], k, label=batch.get("label"),
                           mask=batch.get("mask"), n_steps=steps)
      samplers.append(("student", steps, jax.jit(g_fn, in_shardings=(g_sh, bsh, rep),
                                                 out_shardings=bsh),
                       g_params, jax.random.fold_in(key, 10_000 + steps)))

  # Reference statistics: cached per dataset; reference features are only recomputed when the
  # cache is cold or KID (which needs them, not just their statistics) is asked for.
  cache = os.path.join(workdir, "eval", "ref_stats")
  ref_name = evset.name(opts.split, seed)
  scales = _pixel_scales(size)
  pix_tag = "pixel_features_s" + "-".join(map(str, scales))
  stat_path = lambda tag: os.path.join(cache, f"{ref_name}.{tag}.npz")  # noqa: E731
  extractors = {}  # feature name -> (tag or None, whether the reference needs features)
  if want & {"fd_pixel", "kid_pixel"}:
    extractors["pixel"] = (pix_tag, "kid_pixel" in want or not os.path.isfile(stat_path(pix_tag)))
  if want & {"fid", "kid"}:
    extractors["pool"] = ("inception_pool",
                          "kid" in want or not os.path.isfile(stat_path("inception_pool")))
  if "is" in want:
    extractors["logits"] = (None, False)
  if "ca" in want:
    extractors["ca"] = (None, False)

  def _feats(x):
    out = {}
    if "psnr" in want:
      out["psnr"] = metrics.psnr(x["out"], x["x0"])
    if "ssim" in want:
      out["ssim"] = metrics.ssim(x["out"], x["x0"])
    if "pixel" in extractors:
      out["pixel"] = metrics.pixel_features(x["out"], scales=scales)
    return out

  feats_fn = jax.jit(_feats, in_shardings=(bsh,), out_shardings=bsh)
  inc_fn = res_fn = None
  if inc_vars is not None:
    inc_vars = jax.device_put(inc_vars, rep)
    inc_fn = jax.jit(lambda v, x: inception.InceptionV3().apply(v, inception.preprocess(x)),
                     in_shardings=(rep, bsh), out_shardings=bsh)
  if res_vars is not None:
    res_vars = jax.device_put(res_vars, rep)
    nc = int(res_vars["params"]["fc"]["bias"].shape[0])
    rgb = lambda x: x if x.shape[-1] == 3 else jnp.repeat(x, 3, axis=-1)  # noqa: E731
    res_fn = jax.jit(lambda v, x: resnet.ResNet50(nc).apply(v, resnet.preprocess_imagenet(rgb(x))),
                     in_shardings=(rep, bsh), out_shardings=bsh)

  ref_inception = extractors.get("pool", (None, False))[1] or "is" in want
  keep = max(opts.grid_rows, min(opts.swd_images, evset.n))
  names = ["input", "reference"] + [f"{g}/{c}" for g, c, *_ in samplers]
  acc = {name: _Accumulator(keep) for name in names}

  def measure(name: str, out, batch, valid: int, labels=None):
    a = acc[name]
    f = _to_host(feats_fn({"out": out, "x0": batch["x0"]}))
    for k, v in f.items():
      if k == "pixel" and name == "reference" and not extractors["pixel"][1]:
        continue
      a.add(k, v[:valid])
    if inc_fn is not None and (name != "reference" or ref_inception):
      o = _to_host(inc_fn(inc_vars, out))
      a.add("pool", o["pool"][:valid])
      a.add("logits", o["logits"][:valid])
    if res_fn is not None and labels is not None:
      logits = _to_host(res_fn(res_vars, out))[:valid]
      a.add("correct", (np.argmax(logits, axis=-1) == labels[:valid]).astype(np.float64))
    if a.kept < a.keep:
      a.add_images(_to_host(out)[:valid])

  t_start = time.time()
  warm = set()
  for j, local in evset.batches():
    valid = evset.valid(j)
    gb = {k: shd.global_batch(mesh, v) for k, v in local.items() if k in ("x0", "xT", "mask")}
    lab = _model_label(problem, local, len(local["x0"]))
    model_batch = {k: gb[k] for k in ("xT", "mask") if k in gb}
    if lab is not None:
      model_batch["label"] = shd.global_batch(mesh, lab)
    labels = _to_host(shd.global_batch(mesh, local["label"])) if ca_labels else None
    measure("input", gb["xT"], gb, valid, labels)
    measure("reference", gb["x0"], gb, valid, labels)
    for g, c, fn, params, k in samplers:
      kb = jax.random.fold_in(k, j)
      if (g, c) not in warm:  # compile and warm up outside the timing
        jax.block_until_ready(fn(params, model_batch, kb))
        warm.add((g, c))
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(params, model_batch, kb))
      acc[f"{g}/{c}"].seconds.append((time.perf_counter() - t0) / opts.batch_size)
      measure(f"{g}/{c}", out, gb, valid, labels)
  elapsed = time.time() - t_start

  # Reference statistics (written through the cache on a cold start).
  ref_stats = {}
  for fname, (tag, _) in extractors.items():
    if tag is None:
      continue
    feats = acc["reference"].get(fname)
    ref_stats[fname] = inception.reference_stats(
        ref_name, lambda feats=feats: feats, cache, features=lambda f: f, tag=tag)
  ref_imgs = _from_uint8(acc["reference"].kept_images())

  def summarise(name: str) -> dict:
    a = acc[name]
    row: dict[str, float] = {}
    for m in ("psnr", "ssim"):
      if m in want:
        row[m] = float(np.mean(a.get(m)))
    if "swd" in want:
      row["swd"] = float(metrics.swd(_from_uint8(a.kept_images()), ref_imgs)["mean"])
    for fname, fd_key, kid_key in (("pixel", "fd_pixel", "kid_pixel"), ("pool", "fid", "kid")):
      f, ref_f = a.get(fname), acc["reference"].get(fname)
      if f is None:
        continue
      if fd_key in want:
        s = ref_stats[fname]
        row[fd_key] = metrics.frechet_distance(*metrics.feature_stats(f), s["mu"], s["sigma"])
      if kid_key in want:
        row[kid_key], row[kid_key + "_std"] = metrics.kid(
            f, ref_f, subset_size=opts.kid_subset_size, seed=seed)
    if "is" in want and a.get("logits") is not None:
      row["is"], row["is_std"] = metrics.inception_score(
          a.get("logits"), splits=max(1, min(opts.is_splits, evset.n)))
    if "ca" in want:
      row["ca"] = float(np.mean(a.get("correct")))
    if a.seconds:
      row["s_per_image"] = float(np.median(a.seconds))
    return row

  results: dict[str, Any] = {
      "split": opts.split, "num_images": evset.n, "image_size": size,
      "metrics": list(opts.metrics), "devices": int(mesh.devices.size),
      "device_kind": str(jax.devices()[0].device_kind), "jax": jax.__version__,
      "mesh": {k: int(v) for k, v in mesh.shape.items()}, "batch_size": opts.batch_size,
      "input": summarise("input"), "reference": summarise("reference"), "teacher": {},
      "student": {}, "eval_seconds": elapsed}
  for g, c, *_ in samplers:
    results[g][str(c)] = {"nfe": c, **summarise(f"{g}/{c}")}
  _write_outputs(config, workdir, results, acc, opts, writer)
  return results


def _best_teacher(results: dict) -> str:
  rows = results["teacher"]
  for m, pick in _BEST_BY:
    vals = {k: v[m] for k, v in rows.items() if m in v and np.isfinite(v[m])}
    if vals:
      return pick(vals, key=vals.get)
  return max(rows, key=int)


def _write_outputs(config, workdir: str, results: dict, acc: dict, opts: EvalOptions, writer):
  out_dir = os.path.join(workdir, "eval")
  flat = {}
  for name in ("input", "reference"):
    flat.update({f"{name}_{k}": v for k, v in results[name].items()})
  for g, label in (("teacher", "teacher_nfe{}"), ("student", "student_{}step")):
    for c, row in results[g].items():
      flat.update({f"{label.format(c)}_{k}": v for k, v in row.items() if k != "nfe"})
  # non-finite values (the reference's PSNR against itself is +inf) stay out of the metric log
  writer.write("eval", int(config.distill.rounds),
               {k: v for k, v in flat.items() if np.isfinite(v)}, echo=False)
  if jax.process_index() != 0:
    return
  os.makedirs(out_dir, exist_ok=True)
  best = _best_teacher(results)
  results["best_teacher_nfe"] = int(best)
  rows = opts.grid_rows
  ref = acc["reference"].kept_images()[:rows]
  inp = acc["input"].kept_images()[:rows]
  teacher = (f"teacher NFE {best}", acc[f"teacher/{best}"].kept_images()[:rows])
  grids = []
  if results["student"]:
    for c in results["student"]:
      path = os.path.join(out_dir, f"grid_student{c}.png")
      cols = [("input", inp), (f"student {c}-step", acc[f"student/{c}"].kept_images()[:rows]),
              teacher, ("reference", ref)]
      save_grid(path, cols, rows)
      grids.append((path, cols))
  else:
    path = os.path.join(out_dir, "grid_teacher.png")
    cols = [("input", inp), teacher, ("reference", ref)]
    save_grid(path, cols, rows)
    grids.append((path, cols))
  results["grids"] = [os.path.basename(p) for p, _ in grids]
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  panels = [(m, _PLOT_LABELS[m], m != "psnr")
            for m in ("psnr", "swd", "fid" if "fid" in results["input"] else "fd_pixel")
            if m in results["input"]]
  from ibmd_jax.train import plot_quality

  plot = None
  if panels:
    plot = plot_quality(results, os.path.join(out_dir, "quality_vs_nfe.png"), panels=panels,
                        time_key="s_per_image", time_label="seconds per image (median over batches)",
                        baselines={"degraded input": results["input"]},
                        title=f"{results['num_images']} {results['split']} images; "
                        "the numbers at the points are teacher NFEs / student steps")
  table = format_eval_table(results)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(f"# Evaluation\n\n{results['num_images']} images of the '{results['split']}' split, "
            f"{results['image_size']}x{results['image_size']}, batches of {results['batch_size']} "
            f"over {results['devices']} device(s) (mesh {results['mesh']}).\n\n{table}\n\n"
            "PSNR / SSIM / CA are per image against the paired reference; SWD, FD, KID and FID "
            "compare each set of outputs with the set of reference images. *degraded input* is "
            "the corrupted xT itself (the baseline); *reference (itself)* is the clean images "
            "against themselves: PSNR ∞, SSIM 1 and FD ≈ 0 by construction, while its SWD and "
            "KID are those metrics' sampling-noise floor at this number of images (SWD draws "
            "different random patches from the two sets; KID is unbiased and can be negative). "
            "s / image: median over batches of the sampler's wall-clock per image, after a "
            "warm-up call, with block_until_ready.\n")
    if plot:
      f.write(f"\n![quality against NFE and time]({os.path.basename(plot)})\n")
    for path, cols in grids:
      f.write(f"\n## {os.path.basename(path)}\n\ncolumns: {' | '.join(n for n, _ in cols)}\n\n"
              f"![grid]({os.path.basename(path)})\n")
  print(table, flush=True)


def format_eval_table(results: dict) -> str:
  cols = [m for m in _COLUMNS if m in results["input"]]
  head = "| sampler | NFE | " + " | ".join(_COLUMNS[m][0] for m in cols) + " | s / image |"
  lines = [head, "|" + "---|" * (len(cols) + 3)]

  def fmt(row, m):
    v = row.get(m)
    if v is None:
      return "–"
    s = format(v, _COLUMNS[m][1])
    return s + (f" ± {row[m + '_std']:.2g}" if m in ("kid", "kid_pixel", "is") and
                m + "_std" in row else "")

  def line(name, nfe, row):
    t = f"{row['s_per_image']:.3g}" if "s_per_image" in row else "–"
    return f"| {name} | {nfe} | " + " | ".join(fmt(row, m) for m in cols) + f" | {t} |"

  lines.append(line("degraded input", "–", results["input"]))
  for c, row in results["teacher"].items():
    lines.append(line("teacher", c, row))
  for c, row in results["student"].items():
    lines.append(line("IBMD student", c, row))
  lines.append(line("reference (itself)", "–", results["reference"]))
  return "\n".join(lines)


def to_uint8(x) -> np.ndarray:
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(path: str, columns: list[tuple[str, np.ndarray]], rows: int = 8,
              min_cell: int = 64) -> None:
  """One row per example, one column per named image set ([-1, 1] float or uint8 NHWC), with the
  column names written above; images smaller than `min_cell` are enlarged (nearest neighbour) so
  that a tiny run's grid can be looked at. The names also go to <path>.txt."""
  from PIL import Image, ImageDraw

  cols = [c[:rows] if c.dtype == np.uint8 else to_uint8(c[:rows]) for _, c in columns]
  n, h, w, _ = cols[0].shape
  zoom = max(1, -(-min_cell // max(h, w)))
  h, w = h * zoom, w * zoom
  pad, head = 2, 26
  grid = np.full((head + n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
  for j, col in enumerate(cols):
    if col.shape[-1] == 1:
      col = np.repeat(col, 3, axis=-1)
    col = col.repeat(zoom, axis=1).repeat(zoom, axis=2)
    for i in range(len(col)):
      y, x = head + pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = col[i]
  img = Image.fromarray(grid)
  draw = ImageDraw.Draw(img)
  for j, (name, _) in enumerate(columns):
    lines = [""]  # greedy word wrap onto two lines, then cut what still does not fit
    for word in name.split():
      cand = f"{lines[-1]} {word}".strip()
      if draw.textlength(cand) <= w or not lines[-1]:
        lines[-1] = cand
      else:
        lines.append(word)
    for k, line in enumerate(lines[:2]):
      while line and draw.textlength(line) > w:
        line = line[:-1]
      x = pad + j * (w + pad) + max(0, (w - draw.textlength(line)) / 2)
      draw.text((x, 1 + 12 * k), line, fill=(0, 0, 0))
  img.save(path)
  with open(os.path.splitext(path)[0] + ".txt", "w") as f:
    f.write("columns: " + " | ".join(name for name, _ in columns) + "\n")


def teacher_grid(config, workdir: str, problem: ImageProblem, teacher_params) -> str:
  """After teacher training: samples at eval.grid_nfes of the first eval.grid_rows eval images,
  <workdir>/eval/teacher_grid.png (input | teacher at each NFE | reference)."""
  from ibmd_jax.samplers import make_sampler

  ec = config.eval
  rows = int(ec.get("grid_rows", 8)) if "grid_rows" in ec else 8
  nfes = tuple(int(n) for n in (ec.grid_nfes if "grid_nfes" in ec else ec.teacher_nfes))
  split = str(ec.split) if "split" in ec else "test"
  seed = int(config.seed)
  evset = EvalSet(config, split, rows if split == "train" else int(ec.num_images), rows,
                  seed if split == "test" else seed + 7)
  batch = evset.local_batch(0)
  n = evset.valid(0)
  lab = _model_label(problem, batch, len(batch["x0"]))
  mask = batch.get("mask")
  cols = [("input", batch["xT"][:n])]
  key = jax.random.key(seed + 4)
  for nfe in nfes:
    out = make_sampler(problem.net, problem.bridge, nfe)(teacher_params, batch["xT"],
                                                         jax.random.fold_in(key, nfe),
                                                         label=lab, mask=mask)
    cols.append((f"teacher NFE {nfe}", np.asarray(out)[:n]))
  cols.append(("reference", batch["x0"][:n]))
  path = os.path.join(workdir, "eval", "teacher_grid.png")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_grid(path, cols, rows)
    print(f"[teacher] sample grid (NFE {', '.join(map(str, nfes))}): {path}", flush=True)
  return path
