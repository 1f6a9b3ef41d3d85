"""Shared pieces of the benchmarks: named setups, networks with random weights, timing, device facts.

Imports only jax, flax, optax, numpy and the ibmd_jax modules that need nothing more (no
ml_collections, grain or tfds), so the scripts run on the GPU image as it is.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from configs import unets
from ibmd_jax import compile_cache
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser
from ibmd_jax.models.unet import PRESETS, REMAT_POLICIES, UNet

# Image, bridge and conditioning of each benchmark setup. 'tiny' is a CPU-sized UNet with the
# DDBM layout (xT concatenated, VP bridge, EDM preconditioning) so that CPU tests cover the
# conditional path; full presets use their family's bridge.
# 'tiny' is the image configs' CPU network (configs/unets.py), here at 16x16.
TINY_UNET = dict(unets.TINY, out_channels=3, num_classes=None, num_heads_upsample=-1,
                 use_scale_shift_norm=True, resblock_updown=True, attention_layout="qkv_first",
                 image_size=16)
# 'micro': one resolution level, for tests that must compile a whole round in seconds (one head
# of 32 channels).
MICRO_UNET = dict(TINY_UNET, channel_mult=(1,), attention_resolutions=(1,), num_head_channels=32,
                  image_size=8)
# 'mid': micro's layout (same compile cost) at ADM widths, so that convolutions dominate the
# FLOPs as in the full presets: used to check the analytic round count against XLA's.
MID_UNET = dict(MICRO_UNET, model_channels=128, num_head_channels=64, image_size=16)
_I2SB = dict(kind="i2sb", precond="eps")
_DDBM = dict(kind="vp", precond="edm")
SETUPS = {
    "tiny": dict(unet=TINY_UNET, bridge=_DDBM, conditional=True),
    "micro": dict(unet=MICRO_UNET, bridge=_DDBM, conditional=True),
    "mid": dict(unet=MID_UNET, bridge=_DDBM, conditional=True),
    "i2sb_imagenet256": dict(unet=PRESETS["i2sb_imagenet256"], bridge=_I2SB, conditional=False),
    "ddbm_e2h64": dict(unet=PRESETS["ddbm_e2h64"], bridge=_DDBM, conditional=True),
    "ddbm_diode256": dict(unet=PRESETS["ddbm_diode256"], bridge=_DDBM, conditional=True),
    "dbim_imagenet256_inpaint": dict(unet=PRESETS["dbim_imagenet256_inpaint"], bridge=_DDBM,
                                     conditional=True),
}
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
# Dense bf16 tensor-core peaks from the datasheets (TFLOP/s), for a second MFU figure.
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "B200": 2250.0}


class Setup:
  """A named setup made concrete: UNet module, bridge, denoiser, image shape, FLOP config."""

  def __init__(self, name: str, dtype: str = "bf16", remat: str = "none",
               attention: Optional[str] = None, image_size: Optional[int] = None):
    if name not in SETUPS:
      raise ValueError(f"unknown preset {name!r}; choose from {sorted(SETUPS)}")
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    spec = SETUPS[name]
    self.name, self.dtype_name, self.remat = name, dtype, remat
    self.unet_cfg = dict(spec["unet"])
    self.image_size = int(image_size or self.unet_cfg["image_size"])
    self.channels = int(self.unet_cfg["out_channels"])
    self.conditional = bool(spec["conditional"])
    self.num_classes = self.unet_cfg.get("num_classes")
    self.bridge = Bridge(**spec["bridge"])
    attention = None if attention in (None, "", "default") else attention
    block_remat, self.policy = _split_remat(remat)
    fields = {k: v for k, v in self.unet_cfg.items()}
    fields.update(dtype=DTYPES[dtype], remat=block_remat, attention_impl=attention)
    self.module = UNet(**fields)
    self.net = NetDenoiser(self.bridge, self.module, conditional=self.conditional)

  @property
  def teacher_in(self) -> int:
    return self.channels * (2 if self.conditional else 1)

  def predictor(self):
    """The x̂0 predictor; wrapped in a whole-network jax.checkpoint for a policy remat."""
    if self.policy is None:
      return self.net
    net, policy = self.net, self.policy

    def predict(params, x_t, t, xT=None, z=None, label=None, rng=None):
      f = jax.checkpoint(lambda p, x, tt, c, zz, lab: net(p, x, tt, c, z=zz, label=lab),
                         policy=policy)
      return f(params, x_t, t, xT, z, label)

    return predict

  def shape(self, batch: int) -> tuple:
    return (batch, self.image_size, self.image_size, self.channels)

  def label(self, batch: int):
    return None if self.num_classes is None else jnp.zeros((batch,), jnp.int32)

  def random_params(self, key, z_channels: int = 0):
    """Parameters of the right shapes, drawn at random on the device (no flax init compile).

    Kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm scales 1, biases 0: activations stay
    O(1) through the depth, so bf16 timings see realistic values, never zeros.
    """
    x = jnp.zeros(self.shape(2), jnp.float32)
    shapes = jax.eval_shape(lambda: self.net.init(key, x, z_channels=z_channels,
                                                  label=self.label(2)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)

    @jax.jit
    def draw(key):
      out = []
      for i, (path, s) in enumerate(leaves):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
          out.append(jnp.ones(s.shape, s.dtype))
        elif name == "bias":
          out.append(jnp.zeros(s.shape, s.dtype))
        else:
          fan_in = int(np.prod(s.shape[:-1])) if name == "kernel" else 1
          out.append(jax.random.normal(jax.random.fold_in(key, i), s.shape, s.dtype)
                     / np.sqrt(max(fan_in, 1)))
      return jax.tree_util.tree_unflatten(treedef, out)

    return draw(key)


def _split_remat(remat: str):
  """(UNet per-block remat, whole-network jax.checkpoint policy or None) for a --remat value.

  'none', 'full' or a name in ibmd_jax.models.unet.REMAT_POLICIES: per ResBlock/AttentionBlock
  (the library's knob, config model.remat). 'net:<policy>': one jax.checkpoint around each whole
  network call with that jax.checkpoint_policies policy (blocks not rematerialised).
  """
  if remat.startswith("net:"):
    name = remat[4:]
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None or name.startswith("_") or not callable(policy):
      options = [p for p in dir(jax.checkpoint_policies) if not p.startswith("_")]
      raise ValueError(f"--remat net:<policy> needs a jax.checkpoint_policies name {options}, "
                       f"got {remat!r}")
    if name.startswith(("save_", "offload_")):
      raise ValueError(f"--remat {remat!r}: policies that take arguments are not supported")
    return "none", policy
  if remat not in REMAT_POLICIES:
    raise ValueError(f"--remat must be one of {list(REMAT_POLICIES)} (per UNet block) or "
                     f"net:<jax.checkpoint_policies name> (whole network), got {remat!r}")
  return remat, None


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------- device facts
def device_info() -> dict:
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": d.device_kind,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
          "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "")}


def memory_stats() -> Optional[dict]:
  try:
    return jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None


def peak_bytes() -> Optional[int]:
  stats = memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return None


def compiled_memory(compiled) -> dict:
  """XLA's static buffer assignment: arguments + outputs − aliased (donated) + temporaries."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    m = None
  if m is None:
    return {}
  out = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                         "alias_size_in_bytes", "temp_size_in_bytes",
                                         "generated_code_size_in_bytes") if hasattr(m, k)}
  out["estimated_peak_bytes"] = (out.get("argument_size_in_bytes", 0)
                                 + out.get("output_size_in_bytes", 0)
                                 - out.get("alias_size_in_bytes", 0)
                                 + out.get("temp_size_in_bytes", 0))
  return out


def xla_flops(compiled) -> Optional[float]:
  """cost_analysis()['flops'] (a while loop's body counts once; GPU cuDNN calls may count 0)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def datasheet_peak_tflops() -> Optional[float]:
  kind = jax.devices()[0].device_kind
  for name, tf in DATASHEET_BF16_TFLOPS.items():
    if name in kind:
      return tf
  return None


def is_oom(err: BaseException) -> bool:
  msg = str(err)
  return any(s in msg for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                "OOM", "Resource exhausted"))


# ---------------------------------------------------------------------- compilation cache
def enable_cache(cache_dir: Optional[str]) -> Optional[str]:
  """Persistent compilation cache (ibmd_jax.compile_cache) that stores every program, however
  short its compile, so that a second process can show a hit on each one."""
  if not cache_dir:
    return None
  return compile_cache.enable(os.path.abspath(cache_dir), min_compile_time_s=0.0,
                              min_entry_size_bytes=-1)


def cache_entries(cache_dir: Optional[str]) -> Optional[int]:
  if not cache_dir or not os.path.isdir(cache_dir):
    return None
  return sum(len(files) for _, _, files in os.walk(cache_dir))


# ---------------------------------------------------------------------- timing
def timed_compile(jitted, *args, cache_dir: Optional[str] = None, **kwargs):
  """(compiled, info): trace+lower and XLA compile timed apart; with a cache, whether the compile
  was served by it (JAX's cache-hit event) and the entries before and after."""
  before = cache_entries(cache_dir)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args, **kwargs)
  t1 = time.perf_counter()
  with compile_cache.CacheEvents() as ev:
    compiled = lowered.compile()
  t2 = time.perf_counter()
  info = {"lower_s": t1 - t0, "compile_s": t2 - t1}
  if cache_dir:
    info.update(cache_entries_before=before, cache_entries_after=cache_entries(cache_dir),
                cache_hits=ev.hits, cache_writes=ev.misses, cache_hit=ev.hits > 0)
  return compiled, info


def summary(times: list) -> dict:
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "count": len(times), "all_s": times}


def measure_matmul_peak(n: Optional[int] = None, dtype: Optional[str] = None, chain: int = 10,
                        repeats: int = 5) -> dict:
  """Dense square matmul rate: a jitted chain of `chain` dependent n³ products, median of
  `repeats` timed runs after one warm-up. Inputs are random and scaled by 1/sqrt(n) so the chain
  stays O(1) (never zeros: they run faster than real data)."""
  gpu = jax.default_backend() != "cpu"
  n = int(n or (8192 if gpu else 512))
  dt = DTYPES[dtype or ("bf16" if gpu else "f32")]
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dt)
  b = (jax.random.normal(kb, (n, n), jnp.float32) / np.sqrt(n)).astype(dt)

  @jax.jit
  def run(a, b):
    return jax.lax.fori_loop(0, chain, lambda i, x: x @ b, a)

  jax.block_until_ready(run(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(a, b))
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  flops = 2.0 * n ** 3 * chain
  return {"n": n, "dtype": jnp.dtype(dt).name, "chain": chain, "flops_per_run": flops,
          "tflops": flops / med / 1e12, "best_tflops": flops / min(times) / 1e12,
          **summary(times)}


def write_json(path: Optional[str], obj: Any) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_jsonable)
  os.replace(tmp, path)


def write_markdown(json_path: Optional[str], lines: list, title: str = "") -> Optional[str]:
  """The markdown table beside the JSON file (<name>.md); returns its path."""
  if not json_path:
    return None
  path = (json_path[:-5] if json_path.endswith(".json") else json_path) + ".md"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    if title:
      f.write(f"### {title}\n\n")
    f.write("\n".join(lines) + "\n")
  return path


def _jsonable(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  return str(x)


def gib(x: Optional[float]) -> str:
  return "n/a" if x is None else f"{x / 2**30:.2f}"


def deadline_left(deadline: Optional[float]) -> float:
  return float("inf") if not deadline else deadline - time.time()
