"""Optimisers from config: AdamW / Adam / RAdam with optional clipping, warm-up and step decay."""
from __future__ import annotations

import optax


def make_optimizer(cfg, total_steps: int = 0) -> optax.GradientTransformation:
  """cfg: name ('adamw'|'adam'|'radam'), lr, weight_decay, b1, b2, grad_clip (0 = off),
  warmup_steps, decay ('constant'|'step'|'cosine'), decay_every, decay_rate (I2SB: ×0.99 every
  1000), and for 'cosine': decay_steps (0 = total_steps, the run's number of updates of this
  optimiser) and final_lr_frac (the learning rate at the end, as a fraction of lr)."""
  cfg = dict(cfg)
  lr = float(cfg.get("lr", 1e-4))
  warmup = int(cfg.get("warmup_steps", 0))
  decay = cfg.get("decay", "constant")
  if decay == "constant":
    sched = optax.constant_schedule(lr)
  elif decay == "step":
    sched = optax.exponential_decay(lr, transition_steps=int(cfg.get("decay_every", 1000)),
                                    decay_rate=float(cfg.get("decay_rate", 0.99)), staircase=True)
  elif decay == "cosine":
    steps = int(cfg.get("decay_steps", 0) or total_steps)
    if steps <= 0:
      raise ValueError("optimizer decay 'cosine' needs decay_steps > 0 (or a run length to default to)")
    sched = optax.cosine_decay_schedule(lr, max(steps - warmup, 1),
                                        alpha=float(cfg.get("final_lr_frac", 0.0)))
  else:
    raise ValueError(f"optimizer decay must be 'constant', 'step' or 'cosine', got {decay!r}")
  if warmup:
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
  name = cfg.get("name", "adamw")
  b1, b2 = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999))
  if name == "adamw":
    opt = optax.adamw(sched, b1=b1, b2=b2, weight_decay=float(cfg.get("weight_decay", 0.0)))
  elif name == "adam":
    opt = optax.adam(sched, b1=b1, b2=b2)
  elif name == "radam":
    opt = optax.radam(sched, b1=b1, b2=b2)
  else:
    raise ValueError(f"optimizer name must be 'adamw', 'adam' or 'radam', got {name!r}")
  clip = float(cfg.get("grad_clip", 0.0))
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def ema_update(ema, params, decay: float):
  return optax.incremental_update(params, ema, step_size=1.0 - decay)
