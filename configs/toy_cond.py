"""Toy pipeline, conditional (DDBM-style) teacher: train an MLP teacher on a 4-mode Gaussian-mixture
coupling with a VP bridge, distill it with IBMD to a one-step generator, evaluate against the exact
conditional p(x0 | xT).

  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/ibmd_toy
  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/ibmd_toy --config.distill.n_steps=2
"""
import ml_collections

from configs.common import bridge_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"  # teacher | distill | eval | pipeline (teacher -> distill -> eval)
  c.seed = 0
  c.distributed = False  # True: jax.distributed.initialize() first (pods, multi-node GPU)
  c.log_every = 100  # steps between metric lines (teacher steps / distillation rounds)

  c.data = ml_collections.ConfigDict()
  c.data.kind = "toy"
  c.data.coupling = "cond_modes"  # cond_modes | cond_uneven | paired (see ibmd_jax.toy)
  c.data.dim = 2

  c.conditional = True  # DDBM-style: xT is a network input; False = I2SB-style unconditional
  c.bridge = bridge_config(kind="vp", precond="edm")
  c.model = ml_collections.ConfigDict(dict(name="mlp", width=256, depth=3, time_scale=1 / 250.0))

  c.teacher = ml_collections.ConfigDict()
  c.teacher.source = "train"  # train | checkpoint (teacher.checkpoint dir)
  c.teacher.checkpoint = ""
  c.teacher.steps = 3000
  c.teacher.batch_size = 512
  c.teacher.ema = 0.999
  c.teacher.optimizer = ml_collections.ConfigDict(dict(name="adam", lr=1e-3, grad_clip=0.0))

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = "exact"  # exact (closed form, toys only) | network (the trained teacher)
  c.distill.rounds = 1500  # generator updates (the paper's "student grad updates")
  c.distill.batch_size = 256
  c.distill.critic_steps = 5  # L: critic updates per generator update (paper: 5)
  c.distill.z_channels = 2  # 0 turns the noise input off
  c.distill.z_init_scale = 0.0  # 0 = the paper's zero-initialised noise weights
  c.distill.n_steps = 1  # generator steps N
  c.distill.multistep = "dmd2"  # full_chain (I2SB variant) | dmd2 (DDBM variant)
  c.distill.intermediate = "marginal"
  c.distill.ema = 0.99
  c.distill.gen_optimizer = ml_collections.ConfigDict(dict(name="adam", lr=1e-4, b1=0.0, b2=0.99))
  c.distill.critic_optimizer = ml_collections.ConfigDict(dict(name="adam", lr=1e-3, b1=0.0, b2=0.99))

  c.eval = ml_collections.ConfigDict()
  c.eval.teacher_nfes = (1, 2, 4, 16, 100)
  c.eval.teachers = ("network", "exact")  # which teachers to sample: the trained net, closed form
  c.eval.student_steps = (1, 2)
  c.eval.num_conditions = 16  # held-out xT values
  c.eval.samples_per_condition = 400

  # Keep the last `keep` checkpoints; with best_metric set (a round metric, e.g. 'objective_gap'),
  # also keep the best one (averaged over each interval) in <workdir>/checkpoints_best.
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, best_metric="",
                                                best_mode="min"))
  # Device mesh: data = -1 uses every device; fsdp > 1 splits parameters and optimizer states.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # jax.profiler trace of distillation rounds (start, start + steps]; start = 0 is off.
  c.profile = ml_collections.ConfigDict(dict(start=0, steps=5))
  return c
