"""FID Inception-v3 and ResNet-50: parity with independent PyTorch references, weight loading.

The references below are plain torch.nn modules written from the architecture descriptions
(pytorch-fid's FID Inception; torchvision's ResNet-50 v1.5), not from the Flax code. They get
random weights with non-trivial BatchNorm running statistics (calibrated on a batch, then
perturbed), are saved as .pth state dicts in the PyTorch key layout, loaded by the Flax side's
loaders, and both run on the same input. The parity runs use reduced inputs (Inception at its
minimal 75x75 without the resize, ResNet at 64x64); the networks are full size.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
tnn = torch.nn

from ibmd_jax.eval import inception, resnet, weights  # noqa: E402

PARITY_RTOL = 1e-4  # max |flax - torch| / max |torch|, float32 on both sides


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
  """A shared 2-core machine: spinning BLAS / torch threads only slow each other down."""
  old = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    yield
  else:
    with threadpool_limits(1):
      yield
  torch.set_num_threads(old)


# ------------------------------------------------------------------------ torch references


class ConvBNReLU(tnn.Module):
  """Inception's BasicConv2d: bias-free conv, BatchNorm(eps=0.001), ReLU."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = tnn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class FIDBlockA(tnn.Module):
  def __init__(self, cin, pool_ch):
    super().__init__()
    self.branch1x1 = ConvBNReLU(cin, 64, 1)
    self.branch5x5_1 = ConvBNReLU(cin, 48, 1)
    self.branch5x5_2 = ConvBNReLU(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = ConvBNReLU(cin, 64, 1)
    self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, padding=1)
    self.branch_pool = ConvBNReLU(cin, pool_ch, 1)

  def forward(self, x):
    a = self.branch1x1(x)
    b = self.branch5x5_2(self.branch5x5_1(x))
    c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    d = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    return torch.cat([a, b, c, d], dim=1)


class ReductionB(tnn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = ConvBNReLU(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = ConvBNReLU(cin, 64, 1)
    self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, stride=2)

  def forward(self, x):
    dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, 3, stride=2)], dim=1)


class FIDBlockC(tnn.Module):
  def __init__(self, cin, mid):
    super().__init__()
    self.branch1x1 = ConvBNReLU(cin, 192, 1)
    self.branch7x7_1 = ConvBNReLU(cin, mid, 1)
    self.branch7x7_2 = ConvBNReLU(mid, mid, (1, 7), padding=(0, 3))
    self.branch7x7_3 = ConvBNReLU(mid, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = ConvBNReLU(cin, mid, 1)
    self.branch7x7dbl_2 = ConvBNReLU(mid, mid, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = ConvBNReLU(mid, mid, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = ConvBNReLU(mid, mid, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = ConvBNReLU(mid, 192, (1, 7), padding=(0, 3))
    self.branch_pool = ConvBNReLU(cin, 192, 1)

  def forward(self, x):
    single = x
    for name in ("branch7x7_1", "branch7x7_2", "branch7x7_3"):
      single = getattr(self, name)(single)
    double = x
    for i in range(1, 6):
      double = getattr(self, f"branch7x7dbl_{i}")(double)
    pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    return torch.cat([self.branch1x1(x), single, double, pool], dim=1)


class ReductionD(tnn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = ConvBNReLU(cin, 192, 1)
    self.branch3x3_2 = ConvBNReLU(192, 320, 3, stride=2)
    self.branch7x7x3_1 = ConvBNReLU(cin, 192, 1)
    self.branch7x7x3_2 = ConvBNReLU(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = ConvBNReLU(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = ConvBNReLU(192, 192, 3, stride=2)

  def forward(self, x):
    a = self.branch3x3_2(self.branch3x3_1(x))
    b = x
    for i in range(1, 5):
      b = getattr(self, f"branch7x7x3_{i}")(b)
    return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], dim=1)


class FIDBlockE(tnn.Module):
  """pool='avg' is FIDInceptionE_1 (Mixed_7b), pool='max' FIDInceptionE_2 (Mixed_7c)."""

  def __init__(self, cin, pool):
    super().__init__()
    self.pool = pool
    self.branch1x1 = ConvBNReLU(cin, 320, 1)
    self.branch3x3_1 = ConvBNReLU(cin, 384, 1)
    self.branch3x3_2a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = ConvBNReLU(cin, 448, 1)
    self.branch3x3dbl_2 = ConvBNReLU(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = ConvBNReLU(cin, 192, 1)

  def forward(self, x):
    s = self.branch3x3_1(x)
    s = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], dim=1)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], dim=1)
    if self.pool == "max":
      p = F.max_pool2d(x, 3, stride=1, padding=1)
    else:
      p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([self.branch1x1(x), s, d, self.branch_pool(p)], dim=1)


class TorchFIDInception(tnn.Module):
  """Input NCHW in [-1, 1]; returns (2048-d pooled features, 1008 logits)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = ConvBNReLU(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = ConvBNReLU(32, 32, 3)
    self.Conv2d_2b_3x3 = ConvBNReLU(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = ConvBNReLU(64, 80, 1)
    self.Conv2d_4a_3x3 = ConvBNReLU(80, 192, 3)
    self.Mixed_5b = FIDBlockA(192, 32)     # -> 256
    self.Mixed_5c = FIDBlockA(256, 64)     # -> 288
    self.Mixed_5d = FIDBlockA(288, 64)     # -> 288
    self.Mixed_6a = ReductionB(288)        # -> 384 + 96 + 288 = 768
    self.Mixed_6b = FIDBlockC(768, 128)
    self.Mixed_6c = FIDBlockC(768, 160)
    self.Mixed_6d = FIDBlockC(768, 160)
    self.Mixed_6e = FIDBlockC(768, 192)
    self.Mixed_7a = ReductionD(768)        # -> 320 + 192 + 768 = 1280
    self.Mixed_7b = FIDBlockE(1280, "avg")  # -> 320 + 768 + 768 + 192 = 2048
    self.Mixed_7c = FIDBlockE(2048, "max")
    self.fc = tnn.Linear(2048, 1008)

  def forward(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return pool, self.fc(pool)


class TorchBottleneck(tnn.Module):
  def __init__(self, cin, width, stride):
    super().__init__()
    cout = 4 * width
    self.conv1 = tnn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(width)
    self.conv2 = tnn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
    self.bn2 = tnn.BatchNorm2d(width)
    self.conv3 = tnn.Conv2d(width, cout, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                       tnn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(tnn.Module):
  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    cin = 64
    for i, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                 (512, 3, 2)]):
      layer = []
      for j in range(blocks):
        layer.append(TorchBottleneck(cin, width, stride if j == 0 else 1))
        cin = 4 * width
      setattr(self, f"layer{i + 1}", tnn.Sequential(*layer))
    self.fc = tnn.Linear(2048, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomise(model, calib, seed):
  """He-normal convs, random affine BN, running stats from a calibration batch then perturbed:
  activations stay O(1) through the whole depth and every statistic matters."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.Conv2d):
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * np.sqrt(2.0 / fan_in))
      elif isinstance(m, tnn.BatchNorm2d):
        m.momentum = None  # cumulative average: the calibration batch's statistics
        m.reset_running_stats()
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
      elif isinstance(m, tnn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / np.sqrt(m.in_features))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    model.train()
    model(calib)
    model.eval()
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        c = m.running_mean.shape[0]
        m.running_var.mul_(0.7 + 0.6 * torch.rand(c, generator=g))
        m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=g))
  return model


def _rel_err(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def _nhwc(x_nchw):
  return np.ascontiguousarray(x_nchw.numpy().transpose(0, 2, 3, 1))


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fid_pair(tmp_path_factory):
  torch.manual_seed(0)
  model = _randomise(TorchFIDInception(), torch.rand(6, 3, 75, 75) * 2 - 1, seed=1)
  path = str(tmp_path_factory.mktemp("w") / "fid_inception.pth")
  torch.save(model.state_dict(), path)
  return model, path, inception.load_inception(path)


@pytest.fixture(scope="module")
def resnet_pair(tmp_path_factory):
  torch.manual_seed(0)
  model = _randomise(TorchResNet50(), torch.randn(4, 3, 64, 64), seed=2)
  path = str(tmp_path_factory.mktemp("w") / "resnet50.pth")
  torch.save(model.state_dict(), path)
  return model, path, resnet.load_resnet50(path)


# ------------------------------------------------------------------------ Inception


def test_fid_inception_parity(fid_pair):
  model, _, variables = fid_pair
  x = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(3)) * 2 - 1
  with torch.no_grad():
    pool_t, logits_t = (t.numpy() for t in model(x))
  out = inception.inception_outputs(variables, _nhwc(x), resize=False)
  assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
  assert np.std(pool_t) > 1e-2 and np.std(logits_t) > 1e-2  # not a degenerate network
  e_pool, e_logits = _rel_err(out["pool"], pool_t), _rel_err(out["logits"], logits_t)
  print(f"inception parity: pool rel err {e_pool:.2e}, logits rel err {e_logits:.2e}")
  assert e_pool < PARITY_RTOL and e_logits < PARITY_RTOL


def test_fid_inception_npz_equals_pth(fid_pair, tmp_path):
  model, _, variables = fid_pair
  npz = str(tmp_path / "fid_inception.npz")
  weights.save_npz(model.state_dict(), npz)
  from_npz = inception.load_inception(npz)
  import jax
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), variables, from_npz)
  assert all(jax.tree_util.tree_leaves(same))
  assert len(jax.tree_util.tree_leaves(same)) == 94 * 5 + 2  # 94 conv+BN units and fc


def test_converter_is_strict(fid_pair):
  model, _, _ = fid_pair
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  missing = dict(sd)
  del missing["Mixed_6c.branch7x7dbl_3.bn.running_var"]
  with pytest.raises(ValueError, match="no state-dict entry.*Mixed_6c/branch7x7dbl_3/bn/var"):
    inception.convert_state_dict(missing)
  wrong = dict(sd)
  wrong["Mixed_5b.branch_pool.conv.weight"] = np.zeros((64, 192, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"Mixed_5b\.branch_pool\.conv\.weight.*shape"):
    inception.convert_state_dict(wrong)
  extra = dict(sd, **{"Mixed_5b.extra.weight": np.zeros((3, 3), np.float32)})
  with pytest.raises(ValueError, match="does not have"):
    inception.convert_state_dict(extra)
  # aux-classifier weights (torchvision checkpoints) and BN counters are ignored
  aux = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1008, 768), np.float32),
                    "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.int64)})
  inception.convert_state_dict(aux)


def test_missing_weights_error_names_file(tmp_path):
  path = str(tmp_path / "nope" / "pt_inception.pth")
  with pytest.raises(FileNotFoundError) as e:
    inception.load_inception(path)
  assert path in str(e.value)
  assert "pt_inception-2015-12-05-6726825d.pth" in str(e.value) and "pytorch-fid" in str(e.value)
  with pytest.raises(FileNotFoundError, match="resnet50-0676ba61.pth"):
    resnet.load_resnet50(str(tmp_path / "r50.pth"))


@pytest.mark.parametrize("size", [32, 400])
def test_inception_preprocess_matches_torch_interpolate(size):
  rng = np.random.default_rng(size)
  x01 = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  got = np.asarray(inception.preprocess(x01 * 2 - 1))
  t = torch.from_numpy(x01.transpose(0, 3, 1, 2))
  want = 2 * F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False) - 1
  np.testing.assert_allclose(got, _nhwc(want), atol=2e-6)
  # grayscale, out-of-range clipping and 8-bit quantisation
  g = np.asarray(inception.preprocess(np.full((1, 299, 299, 1), 1.7), quantize=True))
  assert g.shape == (1, 299, 299, 3) and np.all(g == 1.0)


# ------------------------------------------------------------------------ ResNet-50


def test_resnet50_parity_and_accuracy(resnet_pair):
  model, _, variables = resnet_pair
  x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    want = model(x).numpy()
  assert np.std(want) > 1e-2
  got = resnet.classifier_logits(variables, _nhwc(x), preprocess=False)
  err = _rel_err(got, want)
  print(f"resnet50 parity: logits rel err {err:.2e}")
  assert got.shape == (2, 1000) and err < PARITY_RTOL

  order = np.argsort(-want, axis=1)
  acc = lambda labels, k: resnet.classifier_accuracy(variables, _nhwc(x), labels, topk=k,
                                                     preprocess=False)
  assert acc(order[:, 0], 1) == 1.0
  assert acc(np.array([order[0, 0], order[1, 1]]), 1) == 0.5
  assert acc(order[:, 4], 1) == 0.0 and acc(order[:, 4], 5) == 1.0


def test_resnet_preprocess_matches_torchvision_recipe():
  """torchvision: Resize(256) (antialiased bilinear on tensors), CenterCrop(224), Normalize."""
  rng = np.random.default_rng(0)
  x01 = rng.uniform(0, 1, (1, 300, 400, 3)).astype(np.float32)
  got = np.asarray(resnet.preprocess_imagenet(x01 * 2 - 1))
  t = F.interpolate(torch.from_numpy(x01.transpose(0, 3, 1, 2)), size=(256, 341),
                    mode="bilinear", align_corners=False, antialias=True)
  top, left = int(round((256 - 224) / 2)), int(round((341 - 224) / 2))
  t = t[:, :, top:top + 224, left:left + 224]
  mean = torch.tensor(resnet.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(resnet.IMAGENET_STD).view(1, 3, 1, 1)
  want = _nhwc((t - mean) / std)
  assert got.shape == (1, 224, 224, 3)
  np.testing.assert_allclose(got, want, atol=1e-4)
  # a small sample is upsampled (antialiasing is a no-op there): shape only
  assert resnet.preprocess_imagenet(np.zeros((2, 64, 64, 3))).shape == (2, 224, 224, 3)


# ------------------------------------------------------------------------ full size


@pytest.mark.slow
def test_fid_inception_parity_full_pipeline(fid_pair):
  """64x64 samples -> resize to 299 -> network, against torch with F.interpolate."""
  model, _, variables = fid_pair
  x01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    up = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
    pool_t, logits_t = (t.numpy() for t in model(2 * up - 1))
  out = inception.inception_outputs(variables, _nhwc(x01) * 2 - 1)
  assert _rel_err(out["pool"], pool_t) < PARITY_RTOL
  assert _rel_err(out["logits"], logits_t) < PARITY_RTOL
