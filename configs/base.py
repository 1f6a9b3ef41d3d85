"""The whole config schema, every key with its default. Every other config starts from
`get_config()` and only changes values, so any key can be overridden from the command line on any
config (--config.teacher.optimizer.decay=cosine works on the toys and the image setups alike), and
a typo fails before any work, naming the key.

One exception: `model` holds the options of the network that `model.name` picks (ibmd_jax.models:
the MLP's for the toys, the UNet's for images); an image config replaces the MLP's options by the
UNet's.
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from configs import aot
from ibmd_jax.bridges import Bridge
from ibmd_jax.models.mlp import MLP


def bridge_config(**overrides) -> ml_collections.ConfigDict:
  """Every Bridge option with its default (ibmd_jax.bridges.Bridge)."""
  fields = {f.name: f.default for f in dataclasses.fields(Bridge)}
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"unknown bridge option(s) {sorted(unknown)}")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def optimizer_config(name: str = "adam", lr: float = 1e-4, **kw) -> ml_collections.ConfigDict:
  """Every option of ibmd_jax.optim.make_optimizer."""
  o = dict(name=name, lr=lr, weight_decay=0.0, b1=0.9, b2=0.999, grad_clip=0.0, warmup_steps=0,
           decay="constant", decay_every=1000, decay_rate=0.99, decay_steps=0, final_lr_frac=0.0)
  unknown = set(kw) - set(o)
  if unknown:
    raise ValueError(f"unknown optimizer option(s) {sorted(unknown)}")
  o.update(kw)
  return ml_collections.ConfigDict(o)


def mlp_config(**kw) -> ml_collections.ConfigDict:
  fields = {f.name: f.default for f in dataclasses.fields(MLP) if f.name not in ("parent", "name")}
  fields["dtype"] = "float32"
  fields.update(kw)
  m = ml_collections.ConfigDict(dict(name="mlp", **fields))
  m.time_scale = config_dict.placeholder(float)  # None: 1 / the bridge's c_noise span
  if kw.get("time_scale") is not None:
    m.time_scale = kw["time_scale"]
  m.num_classes = config_dict.placeholder(int)
  return m


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # toy (ibmd_jax.toy couplings) | skimage | folder | ab_folder | diode | tfds | arrays (images)
  d.kind = "toy"
  # toys
  d.coupling = "cond_modes"  # cond_modes | cond_uneven | paired | paired_blur (ibmd_jax.toy)
  d.dim = 2
  # images (ibmd_jax.data.pipelines)
  d.image_size = 64
  d.channels = 3
  d.degradation = "none"  # ibmd_jax.data.degradations name; ignored by paired kinds
  d.hole = config_dict.placeholder(int)  # inpaint_center: hole side (default half the image)
  d.quality = config_dict.placeholder(int)  # jpeg: quality
  d.path = ""  # folder / ab_folder / diode root
  d.tfds_name = ""
  d.tfds_data_dir = ""  # where `tfds build ... --file_format=array_record` wrote it
  d.tfds_train_split = ""  # '' = train
  d.tfds_test_split = ""  # '' = validation (else test)
  d.class_conditional = False  # emit the dataset's class labels
  # A class-conditional network on data without labels gets this label for every example; -1 = off.
  d.fixed_label = -1
  d.flip = True
  d.min_scale = 0.25  # skimage: smallest crop scale
  d.crops_per_photo = 8  # skimage: training examples per photo and epoch
  d.num_workers = 0  # grain worker processes (0 = decode in the training process)
  return d


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # teacher | distill | eval | pipeline (teacher -> distill -> eval) | compile (tools/aot.py:
  # the programs compiled for a TPU slice on this host, per-chip memory and FLOPs)
  c.mode = "pipeline"
  c.seed = 0
  c.distributed = False  # True: jax.distributed.initialize() first (pods, multi-node GPU)
  c.log_every = 100  # steps between metric lines (teacher steps / distillation rounds)
  # > 0: after this many seconds save the training state and exit with 75; the same command
  # continues (resumable stages for time-limited machines). 0: run to the end.
  c.stop_after_s = 0.0

  c.data = data_config()
  c.conditional = True  # DDBM-style: xT is a network input; False = I2SB-style unconditional
  c.bridge = bridge_config()
  c.model = mlp_config()

  c.teacher = ml_collections.ConfigDict()
  c.teacher.source = "train"  # train | checkpoint (teacher.checkpoint dir)
  c.teacher.checkpoint = ""
  c.teacher.steps = 1000
  c.teacher.batch_size = 256
  c.teacher.ema = 0.999
  c.teacher.optimizer = optimizer_config("adam", 1e-3)
  c.teacher.save_every = 1000  # teacher training state saves (resume); 0: only at the end/stops
  # Gradient accumulation: each step's batch in this many slices run one after another (activation
  # memory / this; the update is the whole batch's). The per-device batch must divide by it.
  c.teacher.microbatches = 1

  # Sampling: the DBIM η of the teacher's sampler (teacher grids, the first eval teacher sampler)
  # and, unless distill.eta is set, of a multi-step student's steps between generator calls:
  # 1 = ancestral (I2SB's DDPM posterior), 0 = DBIM's deterministic sampler.
  c.sampler = ml_collections.ConfigDict(dict(eta=1.0))

  c.distill = ml_collections.ConfigDict()
  # network: distil the trained / converted teacher; exact: the closed-form x̂0* (toys only).
  c.distill.teacher = "network"
  c.distill.rounds = 1000  # generator updates (the paper's "student grad updates")
  c.distill.batch_size = 256
  c.distill.critic_steps = 5  # L: critic updates per generator update (paper: 5)
  c.distill.microbatches = 1  # gradient accumulation in critic and generator steps (as teacher.)
  # The round as two jitted programs (critic steps; generator step) compiled at once in two
  # threads: about the larger one's compile time instead of the sum; same numbers.
  c.distill.split_round = False
  # 'auto': the critic steps unrolled on CPU meshes (faster rounds, slower compile), a loop elsewhere
  c.distill.critic_unroll = "auto"
  c.distill.z_channels = -1  # generator noise channels: -1 = as many as the data, 0 = none
  c.distill.z_init_scale = 0.0  # std of z's input weights at the start (paper: 0)
  c.distill.n_steps = 1  # generator steps N
  c.distill.multistep = "full_chain"  # full_chain (I2SB variant) | dmd2 (DDBM variant)
  c.distill.intermediate = "marginal"  # dmd2: marginal | posterior
  c.distill.ema = 0.99
  # One knob for one thing (issue 38): the multi-step student's η between its generator calls
  # (None: sampler.eta, the teacher sampler's) and the distillation losses' λ(t) ('': the
  # teacher's bridge.weighting; or 'default', 'uniform', 'snr').
  c.distill.eta = config_dict.placeholder(float)
  c.distill.weighting = ""
  # The critic term's weight in the generator loss: 1 = IBMD; 0 drops it (the benchmark's ablation).
  c.distill.critic_weight = 1.0
  # The frozen teacher's copy in the generator's loss: float32, or bfloat16 for half its memory
  # per chip (its predictions then carry bf16 rounding; critic and generator start from float32).
  c.distill.teacher_dtype = "float32"
  c.distill.gen_optimizer = optimizer_config("adam", 1e-4)
  c.distill.critic_optimizer = optimizer_config("adam", 1e-4)

  c.eval = ml_collections.ConfigDict()
  c.eval.teacher_nfes = (1, 2, 4, 10, 100)
  # DBIM η of each evaluated teacher sampler; () = (sampler.eta,). DDBM/DBIM image configs
  # evaluate (1.0, 0.0): the ancestral sampler and DBIM's deterministic one.
  c.eval.teacher_etas = ()
  c.eval.teachers = ("network",)  # network | exact (the toys' closed form)
  c.eval.student_steps = (1, 2)
  c.eval.batch_size = 64  # examples per sampler call (a multiple of the device count)
  # toys: held-out xT and samples of p(x0 | xT) per xT
  c.eval.num_conditions = 64
  c.eval.samples_per_condition = 400
  # images (docs/evaluation.md)
  c.eval.split = "test"  # test: held-out images / validation split | train: training crops
  c.eval.num_images = 256  # test split: <= 0 takes all of it
  # Weight-free by default; 'fid', 'kid', 'is' need inception_path, 'ca' resnet_path + labels.
  c.eval.metrics = ("psnr", "ssim", "swd", "fd_pixel", "kid_pixel")
  c.eval.inception_path = ""  # pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or .npz
  c.eval.resnet_path = ""  # torchvision resnet50-0676ba61.pth or .npz (classifier accuracy)
  c.eval.swd_images = 1024  # SWD on the first this many images of each set
  c.eval.kid_subset_size = 1000  # KID subset size (capped at the number of images)
  c.eval.is_splits = 10  # Inception-score splits (capped at the number of images)
  c.eval.grid_rows = 8  # examples shown in the image grids
  c.eval.grid_nfes = (1, 100)  # teacher-mode sample grid
  # eval/outputs.npz: every set's outputs (uint8) and per-image PSNR / SSIM, for bootstrap
  # intervals and paired comparisons across runs (ibmd_jax/eval/bootstrap.py, bench/bench64.py)
  c.eval.save_outputs = False
  # evaluate the generator as distillation starts it (the teacher's weights, zero noise weights)
  # instead of a trained one: the control of the benchmark's checks
  c.eval.untrained_student = False

  # Keep the last `keep` checkpoints; with best_metric set (a round metric, e.g. 'objective_gap'),
  # also keep the best one (averaged over each interval) in <workdir>/checkpoints_best.
  # start_over=True: when the checkpoints of this workdir do not fit the config or none restores,
  # move them to checkpoints.replaced-<time> and start from step 0 (otherwise the run refuses).
  # min_free_mb: a save that would leave less free disk space stops the run (one line, exit 1)
  # before writing anything.
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, best_metric="",
                                                best_mode="min", start_over=False,
                                                min_free_mb=16.0))
  # Divergence guard: stop (like a non-finite step) when a loss or gradient norm exceeds
  # divergence_factor times its median over the last `window` steps; 0 = off.
  c.guard = ml_collections.ConfigDict(dict(divergence_factor=1000.0, window=50))
  # A workdir lock whose heartbeat is older than this (e.g. its host died) is taken over.
  c.lock_stale_s = 300.0
  # Device mesh: data = -1 uses every device; fsdp > 1 splits parameters and optimizer states.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # jax.profiler trace of distillation rounds (start, start + steps]; start = 0 is off.
  c.profile = ml_collections.ConfigDict(dict(start=0, steps=5))
  # Compile mode (tools/aot.py): its settings live in configs/aot.py.
  c.aot = aot.aot_config()
  return c
