"""grain pipelines: offline sources, split hygiene, exact resume, per-process sharding, errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from ibmd_jax import data
from ibmd_jax.data import degradations as D


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _id_arrays(n=24, size=8):
  """Constant images whose value encodes their row, so batches can be traced back to rows."""
  vals = np.linspace(-0.9, 0.9, n, dtype=np.float32)
  return vals, np.broadcast_to(vals[:, None, None, None], (n, size, size, 3)).copy()


def _ids(batch, vals):
  return [int(np.argmin(np.abs(vals - v))) for v in batch["x0"][:, 0, 0, 0]]


# ---------------------------------------------------------------------- skimage


def test_skimage_photos_offline_and_split_by_photo():
  assert not set(data.SKIMAGE_TRAIN) & set(data.SKIMAGE_TEST)
  train = {n: data.load_skimage_photo(n) for n in data.SKIMAGE_TRAIN}
  test = {n: data.load_skimage_photo(n) for n in data.SKIMAGE_TEST}
  for name, img in {**train, **test}.items():
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3, name
    assert min(img.shape[:2]) >= 172 and img.std() > 10, name
  for tn, t in test.items():  # no held-out photograph hides in train under another name
    for rn, r in train.items():
      assert t.shape != r.shape or not np.array_equal(t, r), (tn, rn)
  specs = data.skimage_test_crops(64)
  assert {s[0] for s in specs} == set(data.SKIMAGE_TEST)
  assert len(specs) == 725 and len(data.skimage_test_crops(256)) == 30
  for name, top, left, side in specs:
    h, w = test[name].shape[:2]
    assert side in (64, 128) and 0 <= top <= h - side and 0 <= left <= w - side


def test_skimage_train_batches_shapes_ranges_and_degradation():
  cfg = dict(kind="skimage", image_size=64, channels=3, degradation="sr4_bicubic")
  b = next(iter(data.make_dataset(cfg, "train", batch_size=6, seed=0)))
  assert sorted(b) == ["x0", "xT"]
  assert b["x0"].shape == b["xT"].shape == (6, 64, 64, 3)
  assert b["x0"].dtype == np.float32 and b["xT"].dtype == np.float32
  assert b["x0"].min() >= -1 and b["x0"].max() <= 1
  np.testing.assert_allclose(b["xT"], D.sr4_bicubic(b["x0"]), atol=1e-6)
  assert (b["x0"].std(axis=(1, 2, 3)) > 0.03).all()  # crops hold structure, not flat patches
  assert len({float(v) for v in b["x0"].mean(axis=(1, 2, 3))}) == 6  # six different crops


def test_skimage_eval_set_deterministic_held_out():
  cfg = dict(kind="skimage", image_size=16, degradation="inpaint_center", hole=8)
  a = data.load_eval_set(cfg, 12, seed=5)
  b = data.load_eval_set(cfg, 12, seed=5)
  assert sorted(a) == ["mask", "x0", "xT"]
  assert a["x0"].shape == (12, 16, 16, 3) and a["mask"].shape == (12, 16, 16, 1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a["mask"][:, 4:12, 4:12].min() == 1 and a["mask"].sum() == 12 * 64
  c = data.load_eval_set(cfg, 12, seed=6)  # another seed: same crops, other inpainting noise
  np.testing.assert_array_equal(a["x0"], c["x0"])
  assert not np.allclose(a["xT"], c["xT"])
  # The crops are the fixed grid of the held-out photos (centre of the spread: crop k).
  specs = data.skimage_test_crops(16)
  name, top, left, side = specs[int(np.linspace(0, len(specs) - 1, 12).round()[3])]
  crop = data.load_skimage_photo(name)[top:top + side, left:left + side]
  ref = D.from_uint8(np.asarray(Image.fromarray(crop).resize((16, 16), Image.BICUBIC)))
  np.testing.assert_array_equal(a["x0"][3], ref)
  with pytest.raises(ValueError, match="test split has"):
    data.load_eval_set(dict(cfg, image_size=256), 31, 0)


def test_resume_from_state_gives_identical_batches():
  cfg = dict(kind="skimage", image_size=16, degradation="inpaint_center", crops_per_photo=2)
  ds = data.make_dataset(cfg, "train", batch_size=5, seed=3)
  it = iter(ds)
  _take(it, 9)  # past one epoch (17 photos x 2) so the reshuffled second epoch is covered
  state = it.get_state()
  json.dumps(state)  # the training loop stores it in JSON checkpoints
  after = _take(it, 6)
  it2 = iter(data.make_dataset(cfg, "train", batch_size=5, seed=3))
  it2.set_state(state)
  _assert_batches_equal(after, _take(it2, 6))
  fresh = _take(iter(data.make_dataset(cfg, "train", batch_size=5, seed=3)), 1)[0]
  assert not np.array_equal(fresh["x0"], after[0]["x0"])  # the state really moved the stream
  other = _take(iter(data.make_dataset(cfg, "train", batch_size=5, seed=4)), 1)[0]
  assert not np.array_equal(fresh["x0"], other["x0"])  # the seed matters


# ---------------------------------------------------------------------- arrays, sharding, workers


def test_process_sharding_disjoint_and_complete():
  vals, x0 = _id_arrays(24)
  cfg = dict(kind="arrays", image_size=8, degradation="sr4_pool", factor=2, arrays={"x0": x0})
  seen = []
  for pi in range(2):
    it = iter(data.make_dataset(cfg, "train", batch_size=4, seed=1, process_index=pi,
                                process_count=2))
    seen.append([i for b in _take(it, 3) for i in _ids(b, vals)])  # 12 rows: half an epoch
  assert len(set(seen[0])) == 12 and len(set(seen[1])) == 12
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(24))  # the two halves are the epoch
  one = iter(data.make_dataset(cfg, "train", batch_size=8, seed=1))
  single = [i for b in _take(one, 3) for i in _ids(b, vals)]
  # process p feeds rows [4p, 4p+4) of each global batch of 8: the 1-process run's rows, in place
  assert single == [i for j in range(3) for p in range(2) for i in seen[p][4 * j:4 * j + 4]]
  with pytest.raises(ValueError, match="process_index"):
    data.make_dataset(cfg, "train", 4, 0, process_index=2, process_count=2)


def test_arrays_paired_labels_and_test_split():
  vals, x0 = _id_arrays(10)
  xt = -x0
  cfg = dict(kind="arrays", image_size=8, class_conditional=True,
             arrays={"x0": x0, "xT": xt, "label": np.arange(10) % 3})
  batches = list(iter(data.make_dataset(cfg, "test", batch_size=4, seed=0)))
  assert [len(b["x0"]) for b in batches] == [4, 4, 2]  # each test example once, in order
  ids = [i for b in batches for i in _ids(b, vals)]
  assert ids == list(range(10))
  labels = np.concatenate([b["label"] for b in batches])
  assert labels.dtype == np.int32 and labels.tolist() == [i % 3 for i in range(10)]
  # Paired: xT is given, no degradation applied.
  np.testing.assert_array_equal(np.concatenate([b["xT"] for b in batches]), xt)


def test_worker_processes_match_in_process_and_resume():
  vals, x0 = _id_arrays(16)
  cfg = dict(kind="arrays", image_size=8, degradation="inpaint_center", arrays={"x0": x0})
  ref = _take(iter(data.make_dataset(cfg, "train", batch_size=4, seed=2)), 6)
  it = iter(data.make_dataset(cfg, "train", batch_size=4, seed=2, num_workers=1))
  got = _take(it, 4)
  state = it.get_state()
  got += _take(it, 2)
  it2 = iter(data.make_dataset(cfg, "train", batch_size=4, seed=2, num_workers=1))
  it2.set_state(state)
  resumed = _take(it2, 2)
  try:
    _assert_batches_equal(got, ref)
    _assert_batches_equal(resumed, ref[4:])
  finally:
    it.close()
    it2.close()


# ---------------------------------------------------------------------- folders


def _png(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path)


def _solid(color, h=12, w=16):
  return np.broadcast_to(np.asarray(color, np.uint8), (h, w, 3)).copy()


def test_folder_source_classes_and_splits(tmp_path):
  colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
  for split, n in (("train", 3), ("test", 2)):
    for cls, col in colors.items():
      for i in range(n):
        _png(str(tmp_path / split / cls / f"{i}.png"), _solid(col))
  cfg = dict(kind="folder", path=str(tmp_path), image_size=8, degradation="jpeg10",
             class_conditional=True)
  assert data.num_examples(cfg, "train") == 6 and data.num_examples(cfg, "test") == 4
  b = next(iter(data.make_dataset(cfg, "train", batch_size=6, seed=0)))
  assert b["x0"].shape == (6, 8, 8, 3) and b["label"].shape == (6,)
  red = b["x0"][:, 0, 0, 0] > 0.9
  np.testing.assert_array_equal(b["label"], np.where(red, 0, 1))  # cat = 0 (red), dog = 1 (blue)
  assert sorted(b["label"].tolist()) == [0, 0, 0, 1, 1, 1]
  ev = data.load_eval_set(cfg, 4, 0)
  assert ev["label"].tolist() == [0, 0, 1, 1]


def test_folder_without_split_dirs_uses_every_tenth_file(tmp_path):
  for i in range(20):
    _png(str(tmp_path / f"img{i:02d}.jpg"), _solid((10 * i, 0, 0), 10, 10))
  cfg = dict(kind="folder", path=str(tmp_path), image_size=8, degradation="none")
  assert data.num_examples(cfg, "train") == 18 and data.num_examples(cfg, "test") == 2
  ev = data.load_eval_set(cfg, 2, 0)
  reds = np.round((ev["x0"][:, 4, 4, 0] + 1) * 127.5 / 10).astype(int).tolist()
  assert reds == [0, 10]  # img00 and img10: sorted files 0 and 10 are held out
  np.testing.assert_array_equal(ev["xT"], ev["x0"])


def test_ab_folder_pairs(tmp_path):
  a = np.zeros((16, 16, 3), np.uint8)
  a[:, 4] = 255  # the "sketch": one white line
  b = _solid((30, 200, 90), 16, 16)
  for split in ("train", "val"):
    _png(str(tmp_path / split / "1.jpg"), np.concatenate([a, b], axis=1))
    _png(str(tmp_path / split / "2.png"), np.concatenate([a, b], axis=1))
  cfg = dict(kind="ab_folder", path=str(tmp_path), image_size=8, degradation="sr4_pool")
  ev = data.load_eval_set(cfg, 2, 0)
  assert sorted(ev) == ["x0", "xT"]  # paired: the degradation is ignored
  np.testing.assert_allclose(D.to_uint8(ev["x0"][1]).astype(int), _solid((30, 200, 90), 8, 8),
                             atol=1)
  xt = D.to_uint8(ev["xT"][1])
  assert xt[:, 2].min() > 100 and xt[:, 6].max() < 20  # the line lands at column 4 / 2 = 2
  tr = next(iter(data.make_dataset(cfg, "train", 8, seed=0)))
  assert tr["xT"].shape == (8, 8, 8, 3)
  cols = [int(np.argmax(x[:, :, 0].mean(0))) for x in tr["xT"]]
  assert set(cols) <= {2, 5} and len(set(cols)) == 2  # flipped and unflipped sketches


def test_diode_pairs_and_flip_negates_horizontal_normal(tmp_path):
  img = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (12, 1, 3))
  normal = np.broadcast_to(np.asarray([0.6, 0.0, 0.8], np.float32), (12, 16, 3)).copy()
  for split in ("train", "val"):
    _png(str(tmp_path / split / "scene" / "00.png"), img)
    np.save(str(tmp_path / split / "scene" / "00_normal.npy"), normal)
  cfg = dict(kind="diode", path=str(tmp_path), image_size=8)
  ev = data.load_eval_set(cfg, 1, 0)
  np.testing.assert_allclose(ev["xT"][0], np.broadcast_to([0.6, 0.0, 0.8], (8, 8, 3)), atol=1e-5)
  tr = next(iter(data.make_dataset(cfg, "train", 8, seed=0)))
  increasing = tr["x0"][:, 4, -1, 0] > tr["x0"][:, 4, 0, 0]
  np.testing.assert_allclose(tr["xT"][:, 4, 4, 0], np.where(increasing, 0.6, -0.6), atol=1e-5)
  assert increasing.any() and not increasing.all()
  os.remove(str(tmp_path / "val" / "scene" / "00_normal.npy"))
  with pytest.raises(FileNotFoundError, match="no normal map"):
    data.load_eval_set(cfg, 1, 0)


# ---------------------------------------------------------------------- errors and TFDS


def test_config_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*Expected layout"):
    data.make_dataset(dict(kind="folder", path=str(tmp_path / "nope"), image_size=8,
                           degradation="none"), "train", 2, 0)
  with pytest.raises(FileNotFoundError, match="no images"):
    data.make_dataset(dict(kind="folder", path=str(tmp_path), image_size=8, degradation="none"),
                      "train", 2, 0)
  with pytest.raises(ValueError, match="unknown data kind 'lmdb'.*skimage"):
    data.make_dataset(dict(kind="lmdb", image_size=8), "train", 2, 0)
  with pytest.raises(ValueError, match="missing 'image_size'"):
    data.make_dataset(dict(kind="skimage", degradation="none"), "train", 2, 0)
  with pytest.raises(ValueError, match="data.degradation is required"):
    data.make_dataset(dict(kind="skimage", image_size=8), "train", 2, 0)
  with pytest.raises(ValueError, match="valid names"):
    data.make_dataset(dict(kind="skimage", image_size=8, degradation="blur"), "train", 2, 0)
  with pytest.raises(ValueError, match="not divisible"):
    data.make_dataset(dict(kind="skimage", image_size=10, degradation="sr4_bicubic"), "train", 2, 0)
  with pytest.raises(ValueError, match="no class labels"):
    data.make_dataset(dict(kind="skimage", image_size=8, degradation="none",
                           class_conditional=True), "train", 2, 0)
  with pytest.raises(ValueError, match="split must be"):
    data.make_dataset(dict(kind="skimage", image_size=8, degradation="none"), "val", 2, 0)
  with pytest.raises(ValueError, match="data.path is required"):
    data.make_dataset(dict(kind="ab_folder", image_size=8), "train", 2, 0)


def test_tfds_not_prepared_is_a_clear_error_without_download(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  cfg = dict(kind="tfds", tfds_name="imagenet2012", tfds_data_dir=str(empty), image_size=8,
             degradation="none")
  with pytest.raises(FileNotFoundError, match=r"not prepared.*tfds build imagenet2012"):
    data.make_dataset(cfg, "train", 2, 0)
  assert os.listdir(empty) == []  # nothing downloaded or created
  with pytest.raises(ValueError, match="no dataset named"):
    data.make_dataset(dict(cfg, tfds_name="surely_not_a_dataset_xyz"), "train", 2, 0)


def test_tfds_array_record_source(tmp_path):
  import tensorflow_datasets as tfds

  class IbmdTinyImages(tfds.core.GeneratorBasedBuilder):
    """6 train + 3 validation random 12x20 images with labels i % 3 (Tensor feature: no TF)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(12, 20, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(6), "validation": self._generate_examples(3)}

    def _generate_examples(self, n):
      rng = np.random.default_rng(n)
      for i in range(n):
        yield i, {"image": rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), "label": i % 3}

  IbmdTinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  cfg = dict(kind="tfds", tfds_name="ibmd_tiny_images", tfds_data_dir=str(tmp_path), image_size=8,
             degradation="sr4_pool", factor=2, class_conditional=True)
  ev = data.load_eval_set(cfg, 3, 0)
  assert sorted(ev["label"].tolist()) == [0, 1, 2] and ev["x0"].shape == (3, 8, 8, 3)
  rng = np.random.default_rng(3)  # the validation images, in generation order (= label)
  imgs = [rng.integers(0, 256, (12, 20, 3), dtype=np.uint8) for _ in range(3)]
  for x0, label in zip(ev["x0"], ev["label"]):  # TFDS stores examples in hashed-key order
    small = np.asarray(Image.fromarray(imgs[label]).resize((13, 8), Image.BILINEAR))  # I2SB resize
    np.testing.assert_array_equal(D.to_uint8(x0), small[:, 2:10])  # + centre crop
  b = next(iter(data.make_dataset(cfg, "train", 4, seed=0)))
  assert b["x0"].shape == (4, 8, 8, 3) and b["label"].dtype == np.int32
  np.testing.assert_allclose(b["xT"], D.sr4_pool(b["x0"], 2), atol=1e-6)
