"""The builder behind every image config: the paper's eight setups and the 64x64 benchmark.

A config file calls ``paper(name, arg)`` (or ``make`` directly, as bench64 does). ``arg`` is the text
after ``:`` on the command line, a comma-separated list of options:

  tiny    a CPU-sized variant: 16x16 crops of the scikit-image photographs (no download), a
          two-level 32-channel UNet, 60 teacher steps, 3 distillation rounds, 8 evaluation
          images. The setup's defining choices are kept: bridge, conditioning on xT, class labels,
          noise input z, generator steps and multistep variant, masks.
  Nstep   a generator with N steps (e.g. ``2step``); the round count follows the paper where it
          gives one for that N (E2H and DIODE: 300 / 500 rounds at 2 steps).

Paper settings (digest §1.5 and §3.4, Table 7): batch 256, EMA 0.99 on the generator, 5 critic
updates per generator update (1 for the DBIM inpainting teacher), learning rate 5e-5 (I2SB), 1e-5
(DDBM), 3e-6 (DBIM), ``distill.rounds`` = the paper's student gradient updates, noise input z on
every setup but I2SB inpainting (which trains a 4-step generator on the whole chain instead).
Generator and critic start from the teacher; z's input weights start at zero. Networks compute in
bfloat16 (parameters and normalisations in float32). The optimiser is not given by the paper: we
use the teacher code bases' own (AdamW for I2SB, RAdam for DDBM/DBIM, no weight decay) with the
same learning rate for generator and critic.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import base, unets
from ibmd_jax.models.unet import PRESETS

# The teacher code bases: bridge, xT conditioning, multistep variant (digest §3.3) and optimiser.
FAMILIES = {
    # I2SB: unconditional bridge matching, symmetric discrete schedule, x̂0 = x_t − σ_t·F,
    # λ = 1/σ_t² (bridge.weighting 'default' = 1/c_out²), 1000 steps.
    "i2sb": dict(conditional=False, bridge=dict(kind="i2sb", precond="eps", beta_max=0.3),
                 optimizer="adamw", lr=5e-5, critic_steps=5, multistep="full_chain",
                 teacher_lr=5e-5, teacher_ema=0.99, teacher_decay="step", teacher_etas=(1.0,)),
    # DDBM: VP bridge (β_min 0.1, β_d 2), EDM preconditioning σ_data 0.5, λ = 1/c_out², xT
    # concatenated to the network input.
    "ddbm": dict(conditional=True, bridge=dict(kind="vp", precond="edm", sigma_data=0.5,
                                               vp_beta_min=0.1, vp_beta_d=2.0),
                 optimizer="radam", lr=1e-5, critic_steps=5, multistep="dmd2",
                 teacher_lr=1e-4, teacher_ema=0.9999, teacher_decay="constant",
                 teacher_etas=(1.0, 0.0)),
    # DBIM's ImageNet inpainting teacher (DDBM code): I2SB schedule with β_max 1.0, stochastic
    # bridge, ε preconditioning (c_out = −σ_t), xT concatenated and class-conditional.
    # Its bridge coefficients are DBIM's (I2SBNoiseSchedule.get_abc), which its teachers were
    # trained and sample with (tests/test_parity.py; docs/image_tasks.md).
    "dbim": dict(conditional=True, bridge=dict(kind="i2sb", precond="eps", beta_max=1.0,
                                               i2sb_coeffs="dbim"),
                 optimizer="radam", lr=3e-6, critic_steps=1, multistep="dmd2",
                 teacher_lr=1e-4, teacher_ema=0.9999, teacher_decay="constant",
                 teacher_etas=(1.0, 0.0)),
}

_IMAGENET = dict(kind="tfds", tfds_name="imagenet2012", image_size=256)

# The paper's setups (Table 7). rounds: student gradient updates, per generator step count.
SETUPS = {
    "i2sb_sr4_bicubic": dict(family="i2sb", preset="i2sb_imagenet256", rounds={1: 3000},
                             data=dict(_IMAGENET, degradation="sr4_bicubic")),
    "i2sb_sr4_pool": dict(family="i2sb", preset="i2sb_imagenet256", rounds={1: 3000},
                          data=dict(_IMAGENET, degradation="sr4_pool")),
    "i2sb_jpeg5": dict(family="i2sb", preset="i2sb_imagenet256", rounds={1: 2000},
                       data=dict(_IMAGENET, degradation="jpeg5")),
    "i2sb_jpeg10": dict(family="i2sb", preset="i2sb_imagenet256", rounds={1: 3000},
                        data=dict(_IMAGENET, degradation="jpeg10")),
    # Centre 128x128 inpainting: OT-ODE bridge with β_max 1.0, no noise input, 4 steps trained on
    # the whole chain, evaluated at 1, 2 and 4 steps.
    "i2sb_inpaint": dict(family="i2sb", preset="i2sb_imagenet256", rounds={4: 2000}, z=False,
                         bridge=dict(beta_max=1.0, ot_ode=True), student_steps=(1, 2, 4),
                         data=dict(_IMAGENET, degradation="inpaint_center", hole=128)),
    # Edges -> handbags 64x64 (pix2pix layout: A = sketch = xT, B = photo = x0).
    "ddbm_e2h64": dict(family="ddbm", preset="ddbm_e2h64", rounds={1: 14000, 2: 300},
                       data=dict(kind="ab_folder", path="./data/edges2handbags", image_size=64),
                       tiny_degradation="edges"),
    # Surface normals -> image, DIODE outdoor 256x256.
    "ddbm_diode256": dict(family="ddbm", preset="ddbm_diode256", rounds={1: 3700, 2: 500},
                          data=dict(kind="diode", path="./data/diode_outdoor", image_size=256),
                          tiny_degradation="edges"),
    # Centre inpainting with DBIM's class-conditional checkpoint, 4 steps (DMD2 variant).
    "dbim_inpaint256": dict(family="dbim", preset="dbim_imagenet256_inpaint", rounds={4: 3000},
                            student_steps=(1, 2, 4),
                            data=dict(_IMAGENET, degradation="inpaint_center", hole=128,
                                      class_conditional=True)),
}

# The CPU variant's network (configs/unets.py).
TINY_UNET = unets.TINY


def parse_arg(arg: str) -> tuple[bool, int | None]:
  """'tiny,2step' -> (tiny, n_steps); unknown options are an error naming them."""
  tiny, n_steps = False, None
  for opt in [o.strip() for o in (arg or "").split(",") if o.strip()]:
    if opt == "tiny":
      tiny = True
    elif opt.endswith("step") and opt[:-4].isdigit() and int(opt[:-4]) >= 1:
      n_steps = int(opt[:-4])
    else:
      raise ValueError(f"unknown config option {opt!r}; options: 'tiny', 'Nstep' (e.g. '2step')")
  return tiny, n_steps


def make(*, family: str, model: dict, data: dict, rounds: int, n_steps: int = 1, z: bool = True,
         bridge: dict | None = None, teacher_source: str = "checkpoint",
         teacher_checkpoint: str = "", teacher_steps: int = 400_000, teacher_batch: int = 256,
         teacher_lr: float | None = None, batch_size: int = 256, lr: float | None = None,
         teacher_nfes=(1, 2, 4, 10, 100, 1000), student_steps=(1, 2), num_images: int = 256,
         eval_batch: int = 64, dtype: str = "bfloat16", remat: str = "none") -> ml_collections.ConfigDict:
  """An image setup of a teacher family: configs/base.py's schema with this setup's values."""
  fam = FAMILIES[family]
  c = base.get_config()
  c.log_every = 50
  for k, v in data.items():
    if k not in c.data:
      raise ValueError(f"unknown data option {k!r}")
    setattr(c.data, k, v)
  c.conditional = fam["conditional"]  # DDBM-style: xT is a network input (channel concat)
  c.bridge.update(dict(fam["bridge"], **(bridge or {})))
  # The network: the UNet's options replace the toys' MLP options (configs/base.py).
  # remat: "none", "full" or a jax.checkpoint_policies name (ibmd_jax/models/unet.py REMAT_POLICIES)
  # conv_grad 'xla' everywhere: XLA:CPU's YNNPACK weight gradient is 2.5x faster than the 'matmul'
  # one of ibmd_jax/models/conv.py on the tiny UNet's teacher step (docs/benchmarks.md, CPU section)
  c.model = ml_collections.ConfigDict(dict(name="unet", **model, dtype=dtype, remat=remat,
                                           attention_impl=config_dict.placeholder(str),
                                           conv_grad="xla"))
  if c.model.get("num_classes") is None:  # overridable from the command line (an int or None)
    c.model.num_classes = config_dict.placeholder(int)
  c.model.image_size = c.data.image_size

  c.teacher.source = teacher_source  # train | checkpoint (teacher.checkpoint dir)
  c.teacher.checkpoint = teacher_checkpoint
  c.teacher.steps = teacher_steps  # teacher training (source='train', or mode=teacher)
  c.teacher.batch_size = teacher_batch
  c.teacher.ema = fam["teacher_ema"]
  # The teachers' own recipe (I2SB: AdamW 5e-5, ×0.99 every 1000 steps; DDBM: RAdam 1e-4).
  c.teacher.optimizer = base.optimizer_config(fam["optimizer"], teacher_lr or fam["teacher_lr"],
                                              decay=fam["teacher_decay"])
  c.teacher.save_every = 1000

  c.distill.rounds = rounds
  c.distill.batch_size = batch_size
  c.distill.critic_steps = fam["critic_steps"]
  c.distill.z_channels = -1 if z else 0  # z ~ N(0, I) shaped like x (-1: the data's channels)
  c.distill.z_init_scale = 0.0  # the paper's zero-initialised noise weights
  c.distill.n_steps = n_steps
  c.distill.multistep = fam["multistep"]
  c.distill.gen_optimizer = base.optimizer_config(fam["optimizer"], lr or fam["lr"])
  c.distill.critic_optimizer = base.optimizer_config(fam["optimizer"], lr or fam["lr"])

  c.eval.teacher_nfes = tuple(teacher_nfes)
  # I2SB teachers: DDPM (OT-ODE on an OT-ODE bridge); DDBM/DBIM teachers: the ancestral sampler
  # and DBIM's deterministic one (η = 0), the paper's baseline for them.
  c.eval.teacher_etas = fam["teacher_etas"]
  c.eval.student_steps = tuple(student_steps)
  c.eval.num_images = num_images
  c.eval.batch_size = eval_batch
  c.eval.grid_nfes = tuple(sorted({min(teacher_nfes), max(teacher_nfes)}))
  return c


def shrink(c: ml_collections.ConfigDict, degradation: str | None = None,
           hole: int | None = None) -> ml_collections.ConfigDict:
  """The tiny CPU variant of a full config, in place (see the module docstring)."""
  paired = c.data.kind in ("ab_folder", "diode")
  c.data.kind = "skimage"
  c.data.image_size = 16
  c.data.path = ""
  c.data.tfds_name = ""
  if degradation or paired:
    c.data.degradation = degradation or "edges"
  if c.data.degradation == "inpaint_center":
    c.data.hole = hole or 8
  c.data.num_workers = 0
  if c.data.class_conditional:  # the photographs have no classes: one label for all
    c.data.class_conditional = False
    c.data.fixed_label = 0
  if c.model.num_classes:
    c.model.num_classes = 10
  c.model.update(TINY_UNET)
  c.model.image_size = 16
  c.model.dtype = "float32"
  c.model.remat = "none"
  c.model.conv_grad = "xla"  # the faster one on XLA:CPU with YNNPACK (docs/benchmarks.md)
  c.log_every = 1
  c.teacher.steps = 60  # enough for a visible loss drop with either family at batch 8
  c.teacher.batch_size = 8
  c.teacher.ema = 0.9
  c.teacher.optimizer.lr = 2e-3
  c.teacher.optimizer.decay = "constant"
  c.distill.rounds = 3
  c.distill.batch_size = 8
  c.distill.critic_steps = min(int(c.distill.critic_steps), 2)
  c.distill.gen_optimizer.lr = c.distill.critic_optimizer.lr = 1e-4
  c.eval.teacher_nfes = (1, 2)
  c.eval.student_steps = tuple(s for s in c.eval.student_steps if s <= 2) or (1,)
  c.eval.num_images = 8
  c.eval.batch_size = 8
  c.eval.grid_nfes = (1, 2)
  c.checkpoint.every = 1000
  return c


def paper(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """One of SETUPS with the paper's settings; the teacher is a converted official checkpoint."""
  s = SETUPS[name]
  tiny, n_steps = parse_arg(arg)
  n_steps = n_steps or min(s["rounds"])
  rounds = s["rounds"].get(n_steps, max(s["rounds"].values()))
  preset = dict(PRESETS[s["preset"]])
  c = make(family=s["family"], model=preset, data=s["data"], rounds=rounds, n_steps=n_steps,
           z=s.get("z", True), bridge=s.get("bridge"), teacher_source="checkpoint",
           teacher_checkpoint=f"./teachers/{name}/teacher",
           remat="full" if s["data"]["image_size"] >= 256 else "none",
           student_steps=s.get("student_steps", (1, 2)))
  if tiny:
    shrink(c, degradation=s.get("tiny_degradation"))
    c.teacher.source = "train"
    c.teacher.checkpoint = ""
  return c
