"""Runs the OFFICIAL PyTorch I2SB / DDBM / DBIM code and saves parity fixtures under tests/fixtures/.

Needs torch (CPU) and the reference code (default ../shared/reference_code, or --ref). Not run by
the tests: the tests read only the .npz files this writes (tests/test_parity.py).

  PYTHONPATH=. python tools/make_parity_fixtures.py [--ref=PATH] [--out=tests/fixtures]

What is recorded (all float32, NCHW as the original; batch 2, 8x8 or 16x16 images):
- denoise_ddbm.npz: a small random-weight DDBM UNetModel (condition_mode='concat', class labels)
  and KarrasDenoiser.denoise's x̂0 for pred_mode vp and ve, cov_xy 0 and σ_data²/2;
- denoise_i2sb.npz: a small random-weight guided-diffusion UNetModel behind I2SB's Image256Net time
  lookup (noise_levels[step]) and Runner.compute_pred_x0;
- sampler_i2sb.npz / sampler_dbim.npz / sampler_heun.npz: the original samplers (I2SB
  Diffusion.ddpm_sampling incl. OT-ODE and masks, DBIM sample_dbim via karras_sample, DDBM
  karras_sample(sampler='heun') with churn) driven by the analytic stand-in x̂0 below, with every
  torch.randn draw recorded in order;
- degradations.npz: I2SB's corruptions (sr4x bicubic / pool, JPEG, centre inpainting + noise fill).
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def standin(x, tau, xT):
  """The deterministic stand-in x̂0 used on both sides (tests/test_parity.py has the JAX twin)."""
  tau = tau.reshape(-1, *([1] * (x.ndim - 1)))
  return torch.tanh(0.9 * x + 0.4 * xT * torch.cos(0.3 * tau) + 0.1 * torch.sin(tau))


class Recorder:
  """Replaces torch.randn_like / randn: fixed-seed draws, recorded in call order."""

  def __init__(self, seed):
    self.gen = torch.Generator().manual_seed(seed)
    self.draws = []

  def randn_like(self, x, *a, **k):
    out = torch.randn(x.shape, generator=self.gen, dtype=torch.float32)
    self.draws.append(out.numpy().copy())
    return out.to(x.dtype)

  def __enter__(self):
    self._saved = torch.randn_like
    torch.randn_like = self.randn_like
    return self

  def __exit__(self, *exc):
    torch.randn_like = self._saved


def _stub_modules():
  # Imported by the originals but not needed here (debugger, LPIPS weights, dataset download).
  # Training-only imports of the runners (EMA, metrics, logging, data loading) are stubbed too.
  import importlib.util
  for name in ("ipdb", "piq", "gdown", "torch_ema", "torchmetrics", "distributed_util",
               "evaluation", "wandb", "prefetch_generator", "easydict", "requests", "torchvision",
               "torchvision.utils", "torch.utils.tensorboard"):
    top = name.split(".")[0]
    if name in sys.modules or (top not in sys.modules and top != "torch" and importlib.util.find_spec(top)):
      continue
    m = types.ModuleType(name)
    m.set_trace = lambda *a, **k: None
    m.LPIPS = m.ExponentialMovingAverage = m.BackgroundGenerator = m.EasyDict = object
    m.build_resnet50 = m.SummaryWriter = None
    sys.modules[name] = m
  if isinstance(sys.modules.get("torchvision"), types.ModuleType) and "torchvision.utils" in sys.modules:
    sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]


class _ExactSelfAttention(torch.nn.Module):
  """CPU stand-in for flash_attn's FlashSelfAttention (a CUDA kernel): exact softmax attention,
  qkv [b, s, 3, h, d] -> [b, s, h, d], scale 1/sqrt(d), as the kernel computes it."""

  def __init__(self, attention_dropout=0.0, **kw):
    super().__init__()

  def forward(self, qkv, causal=False, **kw):
    q, k, v = qkv.unbind(dim=2)
    w = torch.einsum("bshd,bthd->bhst", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhst,bthd->bshd", w.softmax(dim=-1), v)


def _stub_flash_attn():
  names = ("flash_attn", "flash_attn.modules", "flash_attn.modules.mha")
  mods = {n: types.ModuleType(n) for n in names}
  mods["flash_attn.modules.mha"].FlashSelfAttention = _ExactSelfAttention
  sys.modules.update(mods)


def _import_from(root, names):
  """Imports the given modules with `root` first on sys.path, then removes them from the cache so
  that the next family (same package names `ddbm`, ...) imports its own copy."""
  sys.path.insert(0, root)
  try:
    import importlib
    top = names[0].split(".")[0]
    pkg = importlib.import_module(top)
    for sub in ("logger", "dist_util"):
      # DDBM's fp16_util / random_util import a training logger and distributed helpers that the
      # snapshots do not ship (not used by what runs here).
      if top == "ddbm" and not os.path.exists(os.path.join(root, "ddbm", sub + ".py")):
        stub = types.ModuleType("ddbm." + sub)
        sys.modules["ddbm." + sub] = stub
        setattr(pkg, sub, stub)
    mods = [importlib.import_module(n) for n in names]
  finally:
    sys.path.remove(root)
    for key in list(sys.modules):
      if key.split(".")[0] in {n.split(".")[0] for n in names}:
        del sys.modules[key]
  return mods


def _sd(model):
  return {"param/" + k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ preconditioning
DDBM_KW = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
               attention_resolutions=[2], dropout=0.0, channel_mult=[1, 2], num_classes=4,
               use_checkpoint=False, use_fp16=False, num_heads=2, num_head_channels=16,
               num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
               use_new_attention_order=False, attention_type="flash", condition_mode="concat")


def denoise_ddbm(ref):
  unet, kd = _import_from(os.path.join(ref, "ddbm"), ["ddbm.unet", "ddbm.karras_diffusion"])
  torch.manual_seed(0)
  model = unet.UNetModel(**DDBM_KW).eval()
  with torch.no_grad():  # random weights everywhere, incl. the zero-initialised output convs
    for p in model.parameters():
      p.copy_(0.2 * torch.randn_like(p))
  g = torch.Generator().manual_seed(1)
  x_t = torch.randn((2, 3, 8, 8), generator=g)
  xT = torch.randn((2, 3, 8, 8), generator=g)
  y = torch.tensor([1, 3])
  out = {"kwargs": np.asarray(json.dumps(DDBM_KW)), "x_t": x_t.numpy(), "xT": xT.numpy(),
         "label": y.numpy(), **_sd(model)}
  for mode, tmax, ts in (("vp", 1.0, [0.3, 0.97]), ("ve", 80.0, [0.5, 60.0])):
    for cov_name, cov in (("cov0", 0.0), ("covhalf", 0.125)):
      den = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=tmax, sigma_min=1e-4, cov_xy=cov,
                              pred_mode=mode, loss_norm="l2", weight_schedule="bridge_karras")
      t = torch.tensor(ts)
      with torch.no_grad():
        f, x0 = den.denoise(model, x_t, t, xT=xT, y=y)
      out[f"{mode}/{cov_name}/t"] = t.numpy()
      out[f"{mode}/{cov_name}/F"] = f.numpy()
      out[f"{mode}/{cov_name}/x0"] = x0.numpy()
      out[f"{mode}/{cov_name}/weight"] = den.get_weightings(t).numpy()
  return out


I2SB_KW = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
               attention_resolutions=(2,), dropout=0.0, channel_mult=(1, 2), num_classes=None,
               use_checkpoint=False, use_fp16=False, num_heads=2, num_head_channels=16,
               num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
               use_new_attention_order=False)


def denoise_i2sb(ref):
  root = os.path.join(ref, "i2sb")
  gd_unet, runner_mod, net_mod, diff_mod = _import_from(
      root, ["guided_diffusion.unet", "i2sb.runner", "i2sb.network", "i2sb.diffusion"])
  torch.manual_seed(2)
  model = gd_unet.UNetModel(**I2SB_KW).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.2 * torch.randn_like(p))
  betas = runner_mod.make_beta_schedule(n_timestep=1000, linear_end=0.3 / 1000)
  betas = np.concatenate([betas[:500], np.flip(betas[:500])])
  diffusion = diff_mod.Diffusion(betas, "cpu")
  noise_levels = torch.linspace(1e-4, 1.0, 1000) * 1000
  net = types.SimpleNamespace(noise_levels=noise_levels, cond=False, diffusion_model=model)
  runner = types.SimpleNamespace(diffusion=diffusion)
  g = torch.Generator().manual_seed(3)
  x_t = torch.randn((2, 3, 8, 8), generator=g)
  steps = torch.tensor([17, 812])
  with torch.no_grad():
    f = net_mod.Image256Net.forward(net, x_t, steps)
    x0 = runner_mod.Runner.compute_pred_x0(runner, steps, x_t, f)
  return {"kwargs": np.asarray(json.dumps(I2SB_KW)), "x_t": x_t.numpy(), "steps": steps.numpy(),
          "F": f.numpy(), "x0": x0.numpy(), **_sd(model)}


# ------------------------------------------------------------------ samplers
NFES = (1, 2, 5)


def sampler_i2sb(ref):
  root = os.path.join(ref, "i2sb")
  runner_mod, diff_mod, util = _import_from(root, ["i2sb.runner", "i2sb.diffusion", "i2sb.util"])
  out = {}
  g = torch.Generator().manual_seed(4)
  x1 = torch.randn((2, 3, 8, 8), generator=g).clamp(-1, 1)
  mask = torch.zeros((1, 1, 8, 8))
  mask[..., 2:6, 2:6] = 1.0
  out["x1"], out["mask"] = x1.numpy(), mask.numpy()
  cases = {"sr_b0.3": (0.3, False, False), "inpaint_ot_b1.0": (1.0, True, True),
           "inpaint_b1.0": (1.0, False, True)}
  for name, (beta_max, ot_ode, masked) in cases.items():
    betas = runner_mod.make_beta_schedule(n_timestep=1000, linear_end=beta_max / 1000)
    betas = np.concatenate([betas[:500], np.flip(betas[:500])])
    diffusion = diff_mod.Diffusion(betas, "cpu")
    for nfe in NFES:
      steps = util.space_indices(1000, nfe + 1)
      with Recorder(100 + nfe) as rec:
        start = x1
        if masked:  # the runner's noise fill of the hole (sample_batch / compute_batch)
          start = (1. - mask) * x1 + mask * torch.randn_like(x1)
        cond = start
        fn = lambda xt, step: standin(xt, torch.full((xt.shape[0],), float(step)) / 1000., cond)
        xs, x0s = diffusion.ddpm_sampling(steps, fn, start, mask=mask if masked else None,
                                          ot_ode=ot_ode, verbose=False)
      key = f"{name}/nfe{nfe}"
      draws = rec.draws
      if masked:
        out[f"{key}/fill"] = draws.pop(0)
      # per step: the posterior's noise (when nprev > 0 and not OT-ODE), then the known pixels'.
      eps = np.zeros((nfe,) + tuple(x1.shape), np.float32)
      known = np.zeros_like(eps)
      for i in range(nfe):
        prev = steps[::-1][i + 1]
        if not ot_ode and prev > 0:
          eps[i] = draws.pop(0)
        if masked and not ot_ode:
          known[i] = draws.pop(0)
      assert not draws, f"{key}: {len(draws)} unexpected draws"
      out[f"{key}/start"], out[f"{key}/eps"], out[f"{key}/known"] = start.numpy(), eps, known
      out[f"{key}/x"], out[f"{key}/x0"] = xs[:, 0].numpy(), x0s[:, 0].numpy()
      out[f"{key}/steps"] = np.asarray(steps)
  return out


def _patched_karras(kd_mod, den, tscale):
  def denoise(model, x_t, t, xT=None, **kw):
    return None, standin(x_t, t / tscale, xT), None
  den.denoise = denoise
  return den


def sampler_dbim(ref):
  (kd,) = _import_from(os.path.join(ref, "dbim"), ["ddbm.karras_diffusion"])
  kd.dist = types.SimpleNamespace(get_rank=lambda: 0)

  class Gen:  # BatchedSeedGenerator -> recorded torch.randn
    def __init__(self, seed):
      self.rec = REC

    def randn_like(self, x):
      return self.rec.randn_like(x)

  kd.BatchedSeedGenerator = Gen
  out = {}
  g = torch.Generator().manual_seed(5)
  xT = torch.randn((2, 3, 8, 8), generator=g).clamp(-1, 1)
  out["xT"] = xT.numpy()
  den = kd.KarrasDenoiser(kd.VPNoiseSchedule(beta_d=2, beta_min=0.1), None, t_max=1.0,
                          t_min=1e-4, loss_norm="l2")
  _patched_karras(kd, den, 1.0)
  # DBIM's I2SB-schedule bridge coefficients (its .cuda() calls made a no-op on this CPU run)
  cuda = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *a, **k: self
  try:
    ns = kd.I2SBNoiseSchedule(n_timestep=1000, beta_min=0.1, beta_max=1.0)
  finally:
    torch.Tensor.cuda = cuda
  t = torch.tensor([1e-4, 0.0375, 0.25, 0.5, 0.77, 0.999, 1.0], dtype=torch.float64)
  out["i2sb_schedule/t"] = t.numpy()
  for name, v in zip("abc", ns.get_abc(t)):
    out[f"i2sb_schedule/{name}"] = v.numpy()
  global REC
  for eta in (0.0, 0.5, 1.0):
    for nfe in NFES:
      REC = Recorder(200 + nfe)
      x, path, n, x0s, ts, _ = kd.karras_sample(den, None, xT, None, steps=nfe - 1,
                                                model_kwargs={"xT": xT}, sampler="dbim", eta=eta,
                                                clip_denoised=True)
      assert n == nfe, (n, nfe)
      key = f"eta{eta}/nfe{nfe}"
      out[f"{key}/x"] = x.numpy()
      out[f"{key}/ts"] = ts.numpy()
      out[f"{key}/boot"] = REC.draws[0]
      out[f"{key}/eps"] = np.stack(REC.draws[1:]) if nfe > 1 else np.zeros((0,) + xT.shape, np.float32)
  return out


REC = None


def sampler_heun(ref):
  (kd,) = _import_from(os.path.join(ref, "ddbm"), ["ddbm.karras_diffusion"])
  out = {}
  g = torch.Generator().manual_seed(6)
  xT = torch.randn((2, 3, 8, 8), generator=g).clamp(-1, 1)
  out["xT"] = xT.numpy()
  for mode, smin, smax in (("vp", 1e-4, 1.0), ("ve", 2e-3, 80.0)):
    den = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=smax, sigma_min=smin, pred_mode=mode,
                            loss_norm="l2")
    _patched_karras(kd, den, smax)
    den_fn = den.denoise
    den.denoise = lambda model, x_t, t, xT=None, **kw: den_fn(model, x_t, t, xT=xT)[:2]
    for churn in (0.0, 0.33):
      for steps in (1, 2, 5):
        with Recorder(300 + steps) as rec:
          x, _, nfe = kd.karras_sample(den, None, xT, None, steps=steps, model_kwargs={"xT": xT},
                                       sigma_min=smin, sigma_max=smax, churn_step_ratio=churn,
                                       clip_denoised=True)
        key = f"{mode}/churn{churn}/steps{steps}"
        out[f"{key}/x"], out[f"{key}/nfe"] = x.numpy(), np.asarray(nfe)
        # The same run in float64 on the same float32 grid and noise (sample_heun behind
        # karras_sample's clamping denoiser): the exact answer both float32 runs approximate. Near
        # T the ODE divides by 1 − ρ_t²/ρ_T² ≈ 1e-4, so float32 round-off grows there.
        grid64 = kd.get_sigmas_karras(steps, smin, smax - 1e-4, 7.0).double()
        clamp_den = lambda x_t, t, x_T=None: den.denoise(None, x_t, t, xT=xT.double())[1].clamp(-1, 1)
        with Recorder(300 + steps):
          x64, _, _ = kd.sample_heun(clamp_den, xT.double(), grid64, pred_mode=mode,
                                     sigma_max=smax, churn_step_ratio=churn)
        out[f"{key}/x64"] = x64.clamp(-1, 1).numpy()
        out[f"{key}/churn"] = np.stack(rec.draws) if rec.draws else np.zeros((0,) + xT.shape,
                                                                            np.float32)
        out[f"{key}/grid"] = kd.get_sigmas_karras(steps, smin, smax - 1e-4, 7.0).numpy()
  return out


# ------------------------------------------------------------------ degradations
def degradations(ref):
  root = os.path.join(ref, "i2sb")
  sr, jp, inp = _import_from(root, ["corruption.superresolution", "corruption.jpeg",
                                    "corruption.inpaint"])
  g = torch.Generator().manual_seed(7)
  # smooth-ish images in [-1, 1]: a random low-frequency field plus some texture.
  base = torch.nn.functional.interpolate(torch.rand((2, 3, 4, 4), generator=g), size=16,
                                         mode="bilinear", align_corners=False)
  img = (2 * (0.8 * base + 0.2 * torch.rand((2, 3, 16, 16), generator=g)) - 1).clamp(-1, 1)
  log = types.SimpleNamespace(info=lambda *a, **k: None)
  opt = types.SimpleNamespace(device="cpu", image_size=16)
  out = {"img": img.numpy()}
  with torch.no_grad():
    for f in ("bicubic", "pool"):
      out[f"sr4_{f}"] = sr.build_sr4x(opt, log, f, image_size=16)(img).numpy()
    for q in (5, 10):
      out[f"jpeg{q}"] = jp.build_jpeg(log, q)(img).numpy()
    opt.image_size = 16
    xT, mask = inp.build_inpaint_center(opt, log, "center")(img)
    out["inpaint_center/corrupt"], out["inpaint_center/mask"] = xT.numpy(), mask.numpy()
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--ref", default=os.path.join(REPO, "..", "shared", "reference_code"))
  ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
  ap.add_argument("--only", default="", help="comma-separated fixture names")
  args = ap.parse_args()
  torch.set_default_dtype(torch.float32)
  _stub_modules()
  _stub_flash_attn()
  os.makedirs(args.out, exist_ok=True)
  makers = dict(denoise_ddbm=denoise_ddbm, denoise_i2sb=denoise_i2sb, sampler_i2sb=sampler_i2sb,
                sampler_dbim=sampler_dbim, sampler_heun=sampler_heun, degradations=degradations)
  for name, fn in makers.items():
    if args.only and name not in args.only.split(","):
      continue
    arrays = fn(os.path.abspath(args.ref))
    path = os.path.join(args.out, name + ".npz")
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(arrays)} arrays, {os.path.getsize(path) / 1e3:.0f} kB")


if __name__ == "__main__":
  main()
