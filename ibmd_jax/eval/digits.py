"""The digits benchmark's judge: a small classifier trained once on the training digits, and the
paper's metrics computed from it (docs/results.md, digits section; bench/digits.py).

- classifier accuracy (CA): the classifier's top-1 accuracy on the restorations against the
  true labels of the held-out digits (the paper's CA, with a digit classifier for ResNet-50);
- FD: Fréchet distance between the classifier's penultimate features (128-d) of the restorations
  and of the clean held-out digits (the FID analogue);
- PSNR / SSIM against the clean digit;
- diversity: per input, the standard deviation over K restorations made with different noise
  (z and sampler noise), averaged over pixels; a collapsed generator scores ≈ 0.

`DigitScores` adds CA and diversity to ibmd_jax.eval.bootstrap.Bootstrap (which gives PSNR,
SSIM, FD on the classifier's features, KID, SWD): every metric gets replicates on the same paired
draws of the held-out digits, so differences between two sets have paired 95 % intervals.

The classifier sees only the training split (ibmd_jax.data.digits); it is trained once per run root
and cached there as classifier.npz (parameters and its held-out accuracy on the clean digits).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from ibmd_jax.data.digits import as_float
from ibmd_jax.eval import bootstrap

SIGN = dict(bootstrap.SIGN, ca=+1, diversity=+1)


class DigitClassifier(nn.Module):
  """Two 3x3 conv layers (16, 32) with average pooling, a 128-unit feature layer, 10 logits."""

  features: int = 128

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    f = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(f), f


def train_classifier(x: np.ndarray, y: np.ndarray, steps: int = 500, batch: int = 64,
                     lr: float = 1e-3, seed: int = 0, shift: int = 2):
  """Parameters trained with Adam on (x [N, S, S, 1] in [-1, 1], y [N]); random shifts of up to
  `shift` pixels as augmentation."""
  model = DigitClassifier()
  params = model.init(jax.random.key(seed), jnp.zeros((1,) + x.shape[1:], jnp.float32))["params"]
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, yb):
    def loss(p):
      logits, _ = model.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    g = jax.grad(loss)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch)
    xb = x[idx]
    if shift:
      dy, dx = rng.integers(-shift, shift + 1, 2)
      xb = np.roll(xb, (int(dy), int(dx)), axis=(1, 2))
    params, opt = step(params, opt, jnp.asarray(xb), jnp.asarray(y[idx]))
  return params


def _apply_fn():
  model = DigitClassifier()
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


def predict(params, x: np.ndarray, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, 10], features [N, 128]) as numpy."""
  fn = _apply_fn()
  out = [jax.device_get(fn(params, jnp.asarray(x[i:i + batch], jnp.float32)))
         for i in range(0, len(x), batch)]
  return (np.concatenate([o[0] for o in out]).astype(np.float64),
          np.concatenate([o[1] for o in out]).astype(np.float64))


def load_or_train(path: str, image_size: int, steps: int = 500) -> tuple[dict, dict]:
  """(params, meta) from `path` (classifier.npz), or trained on the training digits and saved
  there. meta: image_size, steps, test_accuracy (on the clean held-out digits)."""
  from ibmd_jax.data import digits  # pylint: disable=g-import-not-at-top
  if os.path.exists(path):
    with np.load(path) as z:
      meta = json.loads(str(z["__meta__"]))
      if meta["image_size"] == image_size and meta["steps"] == steps:
        flat = {tuple(k.split("/")): jnp.asarray(z[k]) for k in z.files if k != "__meta__"}
        return traverse_util.unflatten_dict(flat), meta
  train = digits.arrays("train", image_size)
  params = train_classifier(digits.as_float(train["x0"]), train["label"], steps=steps)
  test = digits.arrays("test", image_size)
  logits, _ = predict(params, digits.as_float(test["x0"]))
  meta = {"image_size": image_size, "steps": steps,
          "test_accuracy": float(np.mean(logits.argmax(1) == test["label"]))}
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, __meta__=json.dumps(meta), **flat)
  os.replace(tmp, path)
  return params, meta


def diversity(samples: np.ndarray) -> np.ndarray:
  """Per input: the std over K restorations [K, N, H, W, C], averaged over pixels -> [N]."""
  s = np.asarray(samples, np.float64)
  return s.std(axis=0, ddof=1).reshape(s.shape[1], -1).mean(axis=1)


class DigitScores(bootstrap.Bootstrap):
  """bootstrap.Bootstrap on the classifier's features, plus CA and diversity replicates."""

  def __init__(self, reference: np.ndarray, labels: np.ndarray, params, reps: int = 200,
               seed: int = 0):
    self.params = params
    self.labels = np.asarray(labels)
    fn = _apply_fn()
    super().__init__(reference, features=lambda x: fn(params, jnp.asarray(x, jnp.float32))[1],
                     reps=reps, seed=seed, min_resolution=14)

  def add(self, name: str, images: np.ndarray, psnr=None, ssim=None,
          samples: Optional[np.ndarray] = None) -> dict:
    super().add(name, images, psnr, ssim)
    logits, _ = predict(self.params, np.asarray(images, np.float32))
    correct = (logits.argmax(1) == self.labels).astype(np.float64)
    self.reps_of[name]["ca"] = self.c @ correct / self.n
    if samples is not None and len(samples) >= 2:
      # diversity is measured on the first M inputs (M = samples.shape[1]): their counts
      d = diversity(samples)
      c = self.c[:, :len(d)]
      self.reps_of[name]["diversity"] = (c @ d) / np.maximum(c.sum(1), 1.0)
    return bootstrap.summary(self.reps_of[name])

  def better(self, a: str, b: str, metric: str, scale_b: float = 1.0, offset: float = 0.0
             ) -> tuple[bool, dict]:
    """Whether metric(a) is better than scale_b · metric(b) + offset beyond the paired 95 %
    interval (a higher-is-better metric: the interval lies above 0), and the interval."""
    d = bootstrap.summary({metric: self.reps_of[a][metric] - scale_b * self.reps_of[b][metric]
                           - offset})[metric]
    return (d["lo"] > 0 if SIGN[metric] > 0 else d["hi"] < 0), d


# ------------------------------------------------------------------------------ tables, run report

COLS = (("fd", "FD (classifier) ↓", ".3g"), ("ca", "CA ↑", ".3f"), ("psnr", "PSNR ↑", ".2f"),
        ("ssim", "SSIM ↑", ".3f"), ("diversity", "diversity ↑", ".4f"))
LABELS = {"input": "degraded input", "teacher": "teacher (DDPM / ancestral, η = 1)",
          "teacher_eta0": "teacher (DBIM, η = 0)", "student": "IBMD student",
          "untrained": "generator, never updated (control)",
          "nocritic": "IBMD without the critic term (ablation)"}
_ORDER = ("input", "teacher", "teacher_eta0", "untrained", "nocritic", "student")


def _cell(r, fmt: str) -> str:
  if r is None:
    return "–"
  return f"{r['value']:{fmt}} [{r['lo']:{fmt}}, {r['hi']:{fmt}}]"


def _set_key(name: str):
  g, _, c = name.partition("/")
  return (_ORDER.index(g) if g in _ORDER else 9, int(c or 0))


def table(rows: dict, sets: dict) -> str:
  """Markdown: one line per set ('group/count' or 'input') with every metric's value [interval]
  and the milliseconds per image (sets[name]['s_per_image'], when given)."""
  lines = ["| set | NFE | " + " | ".join(t for _, t, _ in COLS) + " | ms / image |",
           "|" + "---|" * (len(COLS) + 3)]
  for name in sorted(rows, key=_set_key):
    g, _, count = name.partition("/")
    sec = sets.get(name, {}).get("s_per_image")
    lines.append(f"| {LABELS.get(g, g)} | {count or '–'} | "
                 + " | ".join(_cell(rows[name].get(m), f) for m, _, f in COLS)
                 + f" | {'–' if sec is None else f'{float(sec) * 1e3:.3g}'} |")
  return "\n".join(lines)


def one_per_class(labels: np.ndarray) -> np.ndarray:
  """The index of the first example of every class present (a grid that shows 0-9)."""
  labels = np.asarray(labels)
  return np.asarray([int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)])


def outside_expected(rows: dict, expected: dict) -> tuple[list[str], int]:
  """([one line per number outside its expected [lo, hi]], how many numbers were checked).
  expected: {set name: {metric: [lo, hi]}} (keys starting with '_' are comments)."""
  out, checked = [], 0
  for name, ranges in expected.items():
    if name.startswith("_") or name not in rows:
      continue
    for metric, (lo, hi) in ranges.items():
      if metric not in rows[name]:
        continue
      checked += 1
      v = rows[name][metric]["value"]
      if not lo <= v <= hi:
        out.append(f"{name} {metric} = {v:.4g}, outside the expected [{lo:g}, {hi:g}]")
  return out, checked


def score_run(workdir: str, classifier: str = "", reps: int = 200, samples: Optional[dict] = None,
              classifier_steps: int = 500, expected: str = "") -> dict:
  """The digit classifier's view of a digits run (configs/digits.py, mode pipeline or eval with
  eval.save_outputs=True, which keeps every set's outputs in <workdir>/eval/outputs.npz).

  Scores the degraded input and every teacher NFE and student step count there (CA, FD on the
  classifier's features, PSNR, SSIM, each with a paired bootstrap 95 % interval; diversity for
  the sets in `samples`: {name: [K, M, H, W, C] restorations of the first M inputs with other
  noise}), and writes to <workdir>/eval/:
    digits.md           the table, the student's FD against the best teacher's, the pictures
    digits_grid.png     one digit of every class: input | teacher at every NFE | student | reference
    digits_quality.png  FD and CA against NFE and against time per image
  classifier: its .npz (ibmd_jax.eval.digits.load_or_train: trained there if missing; default
  <workdir>/classifier.npz). expected: a JSON file of expected intervals ({set: {metric: [lo,
  hi]}}, e.g. docs/results/digits_demo/expected.json for the demo's config): the report marks every
  number outside them. Returns {'rows', 'table', 'best_teacher', 'fd_ratio', 'markdown', 'grid',
  'plot', 'classifier', 'outside'}.
  """
  from ibmd_jax import paths, report  # pylint: disable=g-import-not-at-top
  from ibmd_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  out_dir = os.path.join(workdir, "eval")
  outputs = os.path.join(out_dir, "outputs.npz")
  if not os.path.exists(outputs):
    raise FileNotFoundError(f"{outputs} is missing: run the digits config with "
                            "--config.eval.save_outputs=True (mode pipeline or eval)")
  config = json.loads(paths.read_text(os.path.join(workdir, "config.json")))
  results = json.load(open(os.path.join(out_dir, "metrics.json")))
  with np.load(outputs) as z:
    sets = {k: z[k] for k in z.files if ":" not in k}
  data = dict(config["data"], class_conditional=True)
  size = int(data["image_size"])
  params, meta = load_or_train(classifier or os.path.join(workdir, "classifier.npz"), size,
                               steps=classifier_steps)
  n = len(sets["reference"])
  labels = pipelines.load_eval_set(data, n, int(config["seed"]))["label"]
  scores = DigitScores(as_float(sets["reference"]), labels, params, reps=reps)
  samples = samples or {}
  rows, timing = {}, {}
  names = ["input"] + sorted((k for k in sets if k not in ("input", "reference")), key=_set_key)
  for name in names:
    rows[name] = scores.add(name, as_float(sets[name]), samples=samples.get(name))
    g, _, c = name.partition("/")
    if c and c in results.get(g, {}):
      timing[name] = {"s_per_image": results[g][c]["s_per_sample"]}
  teachers = [k for k in rows if k.startswith("teacher")]
  best = min(teachers, key=lambda k: rows[k]["fd"]["value"])
  students = [k for k in rows if k.startswith("student")]
  ratio = {s: rows[s]["fd"]["value"] / rows[best]["fd"]["value"] for s in students}
  # the grid: one digit per class
  idx = one_per_class(labels)
  cols = [("input", sets["input"][idx])]
  cols += [(f"teacher NFE {k.partition('/')[2]}", sets[k][idx]) for k in teachers]
  cols += [(f"student {k.partition('/')[2]}-step", sets[k][idx]) for k in students]
  cols.append(("reference", sets["reference"][idx]))
  grid = os.path.join(out_dir, "digits_grid.png")
  report.save_grid(grid, cols, rows=len(idx))
  # FD and CA against NFE and time, from the evaluation's own timings
  curves = {"groups": [g for g in results.get("groups", []) if g in results],
            "labels": results.get("labels", {})}
  for name, r in rows.items():
    g, _, c = name.partition("/")
    if c and g in curves["groups"]:
      curves.setdefault(g, {})[c] = {"nfe": int(c), "fd": r["fd"]["value"],
                                     "ca": r["ca"]["value"], **timing.get(name, {})}
  plot = report.plot_quality(
      curves, os.path.join(out_dir, "digits_quality.png"),
      panels=[("fd", "FD (digit classifier) ↓", True), ("ca", "classifier accuracy ↑", False)],
      time_key="s_per_image", time_label="seconds per image (median over batches)",
      baselines={"degraded input": {"fd": rows["input"]["fd"]["value"],
                                    "ca": rows["input"]["ca"]["value"]}},
      title=f"digits {data.get('degradation', '')}: {n} held-out digits")
  text = table(rows, timing)
  lines = [f"# Digits run `{workdir}`", "",
           f"{n} held-out digits, every value [paired bootstrap 95 % interval, {reps} replicates]; "
           f"judge: a digit classifier ({meta['steps']} Adam steps, {meta['test_accuracy']:.3f} "
           f"accuracy on the 1,000 clean test digits).", "", text, ""]
  for s, r in ratio.items():
    d = scores.compare(s, best, "fd")
    lines.append(f"- {s}: FD {rows[s]['fd']['value']:.3g} = {r:.2f} × the best teacher's "
                 f"({best}, {rows[best]['fd']['value']:.3g}); FD({s}) − FD({best}) = "
                 f"{d['value']:.3g} [{d['lo']:.3g}, {d['hi']:.3g}]")
  outside = []
  if expected:
    outside, checked = outside_expected(rows, json.loads(paths.read_text(expected)))
    lines += ["", f"Against the expected results ({expected}): " + (
        f"all {checked} numbers within their intervals." if not outside else
        f"{len(outside)} of {checked} numbers OUTSIDE their intervals:")]
    lines += [f"- ⚠️ {o}" for o in outside]
  lines += ["", "![digits](digits_grid.png)", "",
            "Columns: " + " | ".join(c for c, _ in cols) + " (one held-out digit per class).", "",
            "![quality](digits_quality.png)", ""]
  markdown = os.path.join(out_dir, "digits.md")
  with open(markdown, "w") as f:
    f.write("\n".join(lines))
  return {"rows": rows, "table": text, "best_teacher": best, "fd_ratio": ratio,
          "markdown": markdown, "grid": grid, "plot": plot, "classifier": meta,
          "outside": outside}


def main(argv=None) -> int:
  """python -m ibmd_jax.eval.digits --workdir=DIR [--classifier=PATH]: score_run, printed."""
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=score_run.__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--classifier", default="", help="default <workdir>/classifier.npz")
  p.add_argument("--reps", type=int, default=200)
  p.add_argument("--expected", default="", help="JSON of expected intervals: the report marks "
                 "numbers outside them (docs/results/digits_demo/expected.json: the demo's)")
  args = p.parse_args(argv)
  try:
    out = score_run(args.workdir, args.classifier, args.reps, expected=args.expected)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(open(out["markdown"]).read())
  return 0


if __name__ == "__main__":
  sys.exit(main())
