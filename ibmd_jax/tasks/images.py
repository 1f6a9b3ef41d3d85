"""Image tasks: ADM UNet teachers on grain pipelines of (clean, degraded) pairs, and their scoring.

Training batches come from `ibmd_jax.data` pipelines (checkpointable grain iterators, this
process's rows). Scoring (docs/evaluation.md): PSNR / SSIM against the clean reference, SWD and FD
/ KID on weight-free features, FID / KID / IS with the FID Inception and classifier accuracy with a
ResNet-50 when their weight files are given; image grids (input | student | teacher | reference).
The sampling itself (teacher NFEs, samplers, students, sharding, timing) is `ibmd_jax.evaluate`'s.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax import data
from ibmd_jax import paths
from ibmd_jax import report
from ibmd_jax import sharding as shd
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser
from ibmd_jax.errors import MissingPath
from ibmd_jax.eval import inception, metrics, resnet
from ibmd_jax.models import build_model
from ibmd_jax.samplers import make_sampler

WEIGHT_FREE_METRICS = ("psnr", "ssim", "swd", "fd_pixel", "kid_pixel")
INCEPTION_METRICS = ("fid", "kid", "is")
METRICS = WEIGHT_FREE_METRICS + INCEPTION_METRICS + ("ca",)
# (key, column title, format) of each reported number, in table order
COLUMNS = [("psnr", "PSNR ↑", ".2f"), ("ssim", "SSIM ↑", ".4f"), ("swd", "SWD ↓", ".4g"),
           ("fd_pixel", "FD pix ↓", ".4g"), ("kid_pixel", "KID pix ↓", ".3g"),
           ("fid", "FID ↓", ".2f"), ("kid", "KID ↓", ".4g"), ("is", "IS ↑", ".2f"),
           ("ca", "CA ↑", ".3f")]
PLOT_LABELS = {"psnr": "PSNR, dB (higher is better)", "swd": "SWD (lower is better)",
               "fid": "FID (lower is better)", "fd_pixel": "FD, pixel features (lower is better)"}
# The teacher NFE shown in the grids: best by the first of these that was measured.
BEST_BY = (("fid", min), ("swd", min), ("fd_pixel", min), ("kid", min), ("kid_pixel", min),
           ("psnr", max), ("ssim", max))


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  split: str
  metrics: tuple
  num_images: int
  batch_size: int
  grid_rows: int
  inception_path: str
  resnet_path: str
  swd_images: int
  kid_subset_size: int
  is_splits: int
  save_outputs: bool


def eval_options(ec) -> EvalOptions:
  """The eval settings (config.eval as a dict) checked: bad values and missing weight files are
  errors naming them."""
  metrics_ = tuple(dict.fromkeys(str(m) for m in ec["metrics"]))
  bad = [m for m in metrics_ if m not in METRICS]
  if bad:
    raise ValueError(f"eval.metrics has unknown {bad}; choose from {list(METRICS)}")
  if not metrics_:
    raise ValueError(f"eval.metrics is empty; choose from {list(METRICS)}")
  o = EvalOptions(
      split=str(ec["split"]), metrics=metrics_, num_images=int(ec["num_images"]),
      batch_size=int(ec["batch_size"]), grid_rows=int(ec["grid_rows"]),
      inception_path=str(ec["inception_path"] or ""), resnet_path=str(ec["resnet_path"] or ""),
      swd_images=int(ec["swd_images"]), kid_subset_size=int(ec["kid_subset_size"]),
      is_splits=int(ec["is_splits"]), save_outputs=bool(ec.get("save_outputs", False)))
  if o.split not in ("test", "train"):
    raise ValueError(f"eval.split must be 'test' (held-out images) or 'train', got {o.split!r}")
  if o.batch_size < 1:
    raise ValueError(f"eval.batch_size must be >= 1, got {o.batch_size}")
  if o.num_images < 1 and o.split == "train":
    raise ValueError("eval.num_images <= 0 (the whole split) is only possible for split='test'")
  if o.swd_images < 2:
    raise ValueError(f"eval.swd_images must be >= 2, got {o.swd_images}")
  need = [m for m in metrics_ if m in INCEPTION_METRICS]
  if need and not o.inception_path:
    raise ValueError(f"eval.metrics {need} need the FID Inception network: set "
                     f"eval.inception_path to its weights file. {inception.MISSING_HINT}")
  if "ca" in metrics_ and not o.resnet_path:
    raise ValueError("eval.metrics 'ca' needs a ResNet-50 classifier: set eval.resnet_path to its "
                     f"weights file. {resnet.MISSING_HINT}")
  for used, path, key, hint in ((need, o.inception_path, "inception_path", inception.MISSING_HINT),
                                ("ca" in metrics_, o.resnet_path, "resnet_path", resnet.MISSING_HINT)):
    if used and not os.path.isfile(path):
      raise MissingPath(f"weights file not found: {path!r} (eval.{key}). {hint}")
  return o


class EvalSet:
  """The evaluation examples in global batches of `batch_size`.

  split 'test': `num_images` examples spread evenly over the held-out split (num_images <= 0
  takes all of it); 'train': the first `num_images` examples of the shuffled training stream. Each
  example is a pure function of (seed, index), so every process count and batch size sees the same
  images. The last batch is padded by repeating its last example (one compiled shape); `valid`
  counts the real ones. Batches hold 'x0', 'xT', optional 'mask', the network's 'label' (class-
  conditional networks) and the data's 'class' (when the data has labels).
  """

  def __init__(self, task: "ImageTask", split: str, num_images: int, batch_size: int, seed: int):
    self.task = task
    self.cfg = dict(task.options.data)
    self.ds = data.map_dataset(self.cfg, split, seed)  # random access, examples built lazily
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
    self.split, self.seed = split, seed
    self.n, self.batch_size = len(self.indices), int(batch_size)
    self.num_batches = -(-self.n // self.batch_size)

  def valid(self, j: int) -> int:
    return min(self.batch_size, self.n - j * self.batch_size)

  def batch(self, j: int) -> dict:
    """Global batch j as numpy arrays."""
    rows = self.indices[j * self.batch_size:(j + 1) * self.batch_size]
    rows = np.concatenate([rows, np.repeat(rows[-1:], self.batch_size - len(rows))])
    examples = [self.ds[int(i)] for i in rows]
    out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    if "label" in out:
      out["class"] = out.pop("label").astype(np.int32)
    return self.task.with_model_label(out)

  def batches(self):
    """Yields (j, batch j), loading batch j + 1 in a thread while j is evaluated."""
    with ThreadPoolExecutor(1) as pool:
      nxt = pool.submit(self.batch, 0)
      for j in range(self.num_batches):
        cur = nxt.result()
        if j + 1 < self.num_batches:
          nxt = pool.submit(self.batch, j + 1)
        yield j, cur

  def name(self) -> str:
    """Identifies the reference images (for the reference-statistics cache)."""
    c = self.cfg
    src = c.get("tfds_name") or os.path.basename(os.path.normpath(c.get("path") or "")) or ""
    parts = [c["kind"], src, self.split, f"{c['image_size']}px", f"c{c.get('channels', 3)}",
             f"n{self.n}", f"seed{self.seed}"]
    return "-".join("".join(ch if ch.isalnum() or ch in "._" else "_" for ch in str(p))
                    for p in parts if p != "")


class _Accumulator:
  """Per-image metrics, features and the first images of one set (a sampler, input or reference)."""

  def __init__(self, keep: int):
    self.keep = keep
    self.values: dict[str, list] = {}
    self.images: list[np.ndarray] = []
    self.kept = 0

  def add(self, name: str, v: np.ndarray):
    self.values.setdefault(name, []).append(np.asarray(v))

  def add_images(self, x: np.ndarray):
    if self.kept < self.keep:
      take = report.to_uint8(x[:self.keep - self.kept])
      self.images.append(take)
      self.kept += len(take)

  def get(self, name: str) -> Optional[np.ndarray]:
    v = self.values.get(name)
    return None if v is None else np.concatenate(v, axis=0)

  def kept_images(self) -> np.ndarray:
    return np.concatenate(self.images, axis=0)


def _from_uint8(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 127.5 - 1.0


def pixel_scales(size: int) -> tuple:
  """pixel_features scales whose pooled image still fits its 5x5 filters."""
  return tuple(s for s in (1, 2, 4) if size // s >= 5)


class ImageScorer:
  """Paired metrics and feature statistics of every sampler's outputs, computed sharded."""

  columns = COLUMNS

  def __init__(self, opts: EvalOptions, evset: EvalSet, workdir: str, mesh, seed: int):
    self.opts, self.evset, self.seed = opts, evset, seed
    want = self.want = set(opts.metrics)
    # Weight files are read before any sampling, so a missing file costs nothing.
    inc_vars = inception.load_inception(opts.inception_path) if want & set(INCEPTION_METRICS) else None
    res_vars = resnet.load_resnet50(opts.resnet_path) if "ca" in want else None
    first = evset.batch(0)
    size = self.size = int(first["x0"].shape[1])
    if "ssim" in want and min(first["x0"].shape[1:3]) < 11:
      raise ValueError(f"SSIM needs images of at least 11x11, these are {first['x0'].shape[1:3]}: "
                       "drop 'ssim' from eval.metrics")
    if "ca" in want and "class" not in first:
      raise ValueError("eval.metrics 'ca' (classifier accuracy) needs class labels: set "
                       "data.class_conditional=True on a dataset that has them (tfds "
                       "imagenet2012, a folder with one subfolder per class)")
    rep, bsh = shd.replicated(mesh), shd.batch_sharding(mesh)
    # the reference statistics are read back in place: kept in a gs:// workdir's run only for
    # this process (a local folder), in a local workdir across runs
    local = paths.local_dir(workdir)
    self.cache = (os.path.join(local, "eval", "ref_stats") if local else
                  os.path.join(tempfile.gettempdir(), "ibmd_jax_ref_stats"))
    self.ref_name = evset.name()
    self.scales = pixel_scales(size)
    self.tags = {"pixel": "pixel_features_s" + "-".join(map(str, self.scales)),
                 "pool": "inception_pool"}
    # feature name -> whether the reference set needs its features (not only cached statistics)
    self.extract = {}
    if want & {"fd_pixel", "kid_pixel"}:
      self.extract["pixel"] = "kid_pixel" in want or not os.path.isfile(self._stat_path("pixel"))
    if want & {"fid", "kid"}:
      self.extract["pool"] = "kid" in want or not os.path.isfile(self._stat_path("pool"))
    scales = self.scales

    def feats(x):
      out = {}
      if "psnr" in want:
        out["psnr"] = metrics.psnr(x["out"], x["x0"])
      if "ssim" in want:
        out["ssim"] = metrics.ssim(x["out"], x["x0"])
      if "pixel" in self.extract:
        out["pixel"] = metrics.pixel_features(x["out"], scales=scales)
      return out

    self.feats_fn = jax.jit(feats, in_shardings=(bsh,), out_shardings=bsh)
    self.inc_fn = self.res_fn = None
    if inc_vars is not None:
      self.inc_vars = jax.device_put(inc_vars, rep)
      self.inc_fn = jax.jit(lambda v, x: inception.InceptionV3().apply(v, inception.preprocess(x)),
                            in_shardings=(rep, bsh), out_shardings=bsh)
    if res_vars is not None:
      self.res_vars = jax.device_put(res_vars, rep)
      nc = int(res_vars["params"]["fc"]["bias"].shape[0])
      rgb = lambda x: x if x.shape[-1] == 3 else jnp.repeat(x, 3, axis=-1)  # noqa: E731
      self.res_fn = jax.jit(
          lambda v, x: resnet.ResNet50(nc).apply(v, resnet.preprocess_imagenet(rgb(x))),
          in_shardings=(rep, bsh), out_shardings=bsh)
    self.ref_inception = self.extract.get("pool", False) or "is" in want
    self.keep = evset.n if opts.save_outputs else max(opts.grid_rows, min(opts.swd_images, evset.n))
    self.acc: dict[str, _Accumulator] = {}

  def _stat_path(self, fname: str) -> str:
    return os.path.join(self.cache, f"{self.ref_name}.{self.tags[fname]}.npz")

  def add(self, name, out, batch, valid):
    a = self.acc.setdefault(name, _Accumulator(self.keep))
    f = shd.to_host(self.feats_fn({"out": out, "x0": batch["x0"]}))
    for k, v in f.items():
      if k == "pixel" and name == "reference" and not self.extract["pixel"]:
        continue
      a.add(k, v[:valid])
    if self.inc_fn is not None and (name != "reference" or self.ref_inception):
      o = shd.to_host(self.inc_fn(self.inc_vars, out))
      a.add("pool", o["pool"][:valid])
      a.add("logits", o["logits"][:valid])
    if self.res_fn is not None and "class" in batch:
      logits = shd.to_host(self.res_fn(self.res_vars, out))[:valid]
      labels = shd.to_host(batch["class"])[:valid]
      a.add("correct", (np.argmax(logits, axis=-1) == labels).astype(np.float64))
    if a.kept < a.keep:
      a.add_images(shd.to_host(out)[:valid])

  def observe(self, batch, valid):
    """The baselines: the degraded input and the reference itself."""
    self.add("input", batch["xT"], batch, valid)
    self.add("reference", batch["x0"], batch, valid)

  def _ref_stats(self) -> dict:
    out = {}
    for fname in self.extract:
      feats = self.acc["reference"].get(fname)
      out[fname] = inception.reference_stats(self.ref_name, lambda feats=feats: feats, self.cache,
                                             features=lambda f: f, tag=self.tags[fname])
    return out

  def summarise(self, name):
    if not hasattr(self, "_stats"):
      self._stats = self._ref_stats()
      self._ref_imgs = _from_uint8(self.acc["reference"].kept_images())
    a, want, opts = self.acc[name], self.want, self.opts
    row: dict[str, float] = {}
    for m in ("psnr", "ssim"):
      if m in want:
        row[m] = float(np.mean(a.get(m)))
    if "swd" in want:
      row["swd"] = float(metrics.swd(_from_uint8(a.kept_images()), self._ref_imgs)["mean"])
    for fname, fd_key, kid_key in (("pixel", "fd_pixel", "kid_pixel"), ("pool", "fid", "kid")):
      f, ref_f = a.get(fname), self.acc["reference"].get(fname)
      if f is None:
        continue
      if fd_key in want:
        s = self._stats[fname]
        row[fd_key] = metrics.frechet_distance(*metrics.feature_stats(f), s["mu"], s["sigma"])
      if kid_key in want:
        row[kid_key], row[kid_key + "_std"] = metrics.kid(
            f, ref_f, subset_size=opts.kid_subset_size, seed=self.seed)
    if "is" in want and a.get("logits") is not None:
      row["is"], row["is_std"] = metrics.inception_score(
          a.get("logits"), splits=max(1, min(opts.is_splits, self.evset.n)))
    if "ca" in want:
      row["ca"] = float(np.mean(a.get("correct")))
    return row

  def meta(self):
    return {"split": self.evset.split, "num_images": self.evset.n, "image_size": self.size,
            "metrics": list(self.opts.metrics)}

  def header(self, results):
    return (f"{results['num_images']} images of the '{results['split']}' split, "
            f"{results['image_size']}x{results['image_size']}, batches of {results['batch_size']} "
            f"over {results['devices']} device(s) (mesh {results['mesh']}).\n\n"
            "PSNR / SSIM / CA are per image against the paired reference; SWD, FD, KID and FID "
            "compare each set of outputs with the set of reference images. *degraded input* is "
            "the corrupted xT itself (the baseline); *reference (itself)* is the clean images "
            "against themselves: PSNR ∞, SSIM 1 and FD ≈ 0 by construction, while its SWD and "
            "KID are those metrics' sampling-noise floor at this number of images (SWD draws "
            "different random patches from the two sets; KID is unbiased and can be negative). "
            "s / sample: median over batches of the sampler's wall-clock per image, after a "
            "warm-up call, with block_until_ready.")

  def baselines(self):
    return {"input": ("degraded input", self.summarise("input")),
            "reference": ("reference (itself)", self.summarise("reference"))}

  def artifacts(self, out_dir, results):
    """The grids: input | student | teacher at its best NFE | reference, one per student; with
    eval.save_outputs, outputs.npz."""
    if self.opts.save_outputs:
      self.write_outputs(os.path.join(out_dir, "outputs.npz"))
    rows = self.opts.grid_rows
    ref = self.acc["reference"].kept_images()[:rows]
    inp = self.acc["input"].kept_images()[:rows]
    teacher = []
    if results.get("teacher"):
      best = best_teacher(results)
      results["best_teacher_nfe"] = int(best)
      teacher = [(f"teacher NFE {best}", self.acc[f"teacher/{best}"].kept_images()[:rows])]
    grids = []
    for c in results["student"] or [None]:
      if c is None:
        name, cols = "grid_teacher.png", [("input", inp), *teacher, ("reference", ref)]
      else:
        name = f"grid_student{c}.png"
        cols = [("input", inp), (f"student {c}-step", self.acc[f"student/{c}"].kept_images()[:rows]),
                *teacher, ("reference", ref)]
      report.save_grid(os.path.join(out_dir, name), cols, rows)
      grids.append((name, name, "columns: " + " | ".join(n for n, _ in cols)))
    results["grids"] = [g[1] for g in grids]
    return grids

  def write_outputs(self, path: str) -> None:
    """Every set's outputs [N, H, W, C] uint8 under its name ('teacher/100', 'student/1',
    'input', 'reference', ...) and its per-image 'psnr:<name>' / 'ssim:<name>'."""
    arrays = {}
    for name, a in self.acc.items():
      arrays[name] = a.kept_images()
      for m in ("psnr", "ssim"):
        if a.get(m) is not None and name != "reference":
          arrays[f"{m}:{name}"] = a.get(m).astype(np.float64)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)

  def plot_panels(self, results):
    return [(m, PLOT_LABELS[m], m != "psnr")
            for m in ("psnr", "swd", "fid" if "fid" in results["input"] else "fd_pixel")
            if m in results["input"]]


def best_teacher(results: dict) -> str:
  rows = results["teacher"]
  for m, pick in BEST_BY:
    vals = {k: v[m] for k, v in rows.items() if m in v and np.isfinite(v[m])}
    if vals:
      return pick(vals, key=vals.get)
  return max(rows, key=int)


class ImageTask:
  """(x0, xT[, mask][, label]) batches from ``ibmd_jax.data`` pipelines, scored on images."""

  def __init__(self, options):
    """options: ibmd_jax.options.TaskOptions."""
    self.options = options
    self.bridge = Bridge.from_config(options.bridge)
    self.conditional = bool(options.conditional)
    self.net = NetDenoiser(self.bridge, build_model(options.model, self.bridge),
                           conditional=self.conditional)
    self.exact = None
    self.size = int(options.data["image_size"])
    self.data_channels = int(options.data["channels"])
    self.num_classes = options.model.get("num_classes", None)
    self.masked = str(options.data.get("degradation", "")) == "inpaint_center"  # batches hold 'mask'

  def example(self):
    out = {"x": np.zeros((2, self.size, self.size, self.data_channels), np.float32)}
    if self.num_classes:
      out["label"] = np.zeros((2,), np.int32)
    return out

  def fixed_label(self) -> int:
    fixed = int(self.options.data["fixed_label"])
    if not 0 <= fixed < int(self.num_classes):
      raise ValueError(
          f"the network is class-conditional (model.num_classes={self.num_classes}) but the data "
          f"has no labels: set data.class_conditional=True on a labelled dataset, or "
          f"data.fixed_label to a class in [0, {self.num_classes}) (got {fixed})")
    return fixed

  def with_model_label(self, batch: dict) -> dict:
    """The network's 'label': the data's class for a class-conditional network (a fixed label on
    unlabelled data), none for an unconditional one."""
    batch = dict(batch)
    cls = batch.get("class", batch.get("label"))
    batch.pop("label", None)
    if self.num_classes:
      batch["label"] = (cls.astype(np.int32) if cls is not None
                        else np.full((len(batch["xT"]),), self.fixed_label(), np.int32))
    return batch

  def train_data(self, role, batch_size, group=0):
    if role not in ("teacher", "distill"):
      raise ValueError(f"role must be 'teacher' or 'distill', got {role!r}")
    rows = shd.host_rows(batch_size)
    keys = ("x0", "xT", "mask", "class") if role == "teacher" else ("xT", "mask", "class")
    ds = data.make_dataset(dict(self.options.data), "train", batch_size=rows.stop - rows.start,
                           seed=int(self.options.seed) + (0 if role == "teacher" else 1),
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           num_workers=int(self.options.data["num_workers"]))

    def prepare(b):
      b = {("class" if k == "label" else k): np.asarray(v) for k, v in b.items()}
      b = self.with_model_label({k: v for k, v in b.items() if k in keys})
      b.pop("class", None)
      return b

    ds = ds.map(prepare)
    return ds.batch(group, drop_remainder=True) if group else ds

  def check_eval(self, ev):
    eval_options(ev)

  def eval_data(self, ev, batch_size):
    opts = eval_options(ev)
    seed = int(self.options.seed)
    return EvalSet(self, opts.split, opts.num_images, batch_size,
                   seed if opts.split == "test" else seed + 7)

  def scorer(self, ev, eval_data, workdir, mesh):
    return ImageScorer(eval_options(ev), eval_data, workdir, mesh,
                       int(self.options.seed))

  def preview(self, ev, workdir, teacher_params) -> str:
    """Samples at eval.grid_nfes of the first eval.grid_rows eval images,
    <workdir>/eval/teacher_grid.png (input | teacher at each NFE | reference)."""
    ec = ev
    rows, split, seed = int(ec["grid_rows"]), str(ec["split"]), int(self.options.seed)
    evset = EvalSet(self, split, rows if split == "train" else int(ec["num_images"]), rows,
                    seed if split == "test" else seed + 7)
    batch = evset.batch(0)
    n = evset.valid(0)
    cols = [("input", batch["xT"][:n])]
    key = jax.random.key(seed + 4)
    for nfe in (int(v) for v in ec["grid_nfes"]):
      out = make_sampler(self.net, self.bridge, nfe, eta=float(self.options.sampler_eta))(
          teacher_params, batch["xT"], jax.random.fold_in(key, nfe), label=batch.get("label"),
          mask=batch.get("mask"))
      cols.append((f"teacher NFE {nfe}", np.asarray(out)[:n]))
    cols.append(("reference", batch["x0"][:n]))
    path = paths.join(workdir, "eval", "teacher_grid.png")
    if jax.process_index() == 0:
      with paths.staged(paths.join(workdir, "eval")) as out_dir:
        report.save_grid(os.path.join(out_dir, "teacher_grid.png"), cols, rows)
      print(f"[teacher] sample grid (NFE {', '.join(str(v) for v in ec['grid_nfes'])}): {path}",
            flush=True)
    return path
