"""Toy pipeline, conditional (DDBM-style) teacher: train an MLP teacher on a 4-mode Gaussian-mixture
coupling with a VP bridge, distill it with IBMD to a one-step generator, evaluate against the exact
conditional p(x0 | xT).

  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/ibmd_toy
  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/ibmd_toy --config.distill.n_steps=2
"""
import ml_collections

from configs.common import bridge_config


def _adam(lr: float, **kw) -> ml_collections.ConfigDict:
  o = dict(name="adam", lr=lr, b1=0.0, b2=0.99, grad_clip=0.0, warmup_steps=0, decay="constant",
           decay_steps=0, final_lr_frac=0.0)
  o.update(kw)
  return ml_collections.ConfigDict(o)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"  # teacher | distill | eval | pipeline (teacher -> distill -> eval)
  c.seed = 0
  c.distributed = False  # True: jax.distributed.initialize() first (pods, multi-node GPU)
  c.log_every = 100  # steps between metric lines (teacher steps / distillation rounds)
  # > 0: after this many seconds save the training state and exit with 75; the same command
  # continues (resumable stages for time-limited machines). 0: run to the end.
  c.stop_after_s = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.kind = "toy"
  c.data.coupling = "cond_modes"  # cond_modes | cond_uneven | paired (see ibmd_jax.toy)
  c.data.dim = 2

  c.conditional = True  # DDBM-style: xT is a network input; False = I2SB-style unconditional
  # λ(t) = 1 (a plain x0-MSE) for the teacher, the critic and both generator terms. The teacher's
  # usual 1/c_out² weighting is just as valid for IBMD, but on this toy it makes the one-step
  # generator misweight or collapse the modes (docs/toy_results.md); any λ > 0 keeps the
  # objective's minimiser.
  c.bridge = bridge_config(kind="vp", precond="edm", weighting="uniform")
  c.model = ml_collections.ConfigDict(dict(name="mlp", width=256, depth=3, time_scale=1 / 250.0))

  c.teacher = ml_collections.ConfigDict()
  c.teacher.source = "train"  # train | checkpoint (teacher.checkpoint dir)
  c.teacher.checkpoint = ""
  c.teacher.steps = 3000
  c.teacher.batch_size = 512
  c.teacher.ema = 0.999
  c.teacher.optimizer = ml_collections.ConfigDict(dict(name="adam", lr=1e-3, grad_clip=0.0))
  c.teacher.save_every = 0  # teacher training state saves (resume); 0: only on SIGTERM/stop_after_s

  c.distill = ml_collections.ConfigDict()
  # network: distil the trained teacher, as a user does; exact: the closed-form x̂0* (toys only).
  # The critic is a network of the teacher's architecture, so against the trained teacher its
  # approximation error partly cancels in x̂0^φ − x̂0*; against the closed form it is all bias (at
  # batch 256, one-step ED 0.012-0.019 distilling the network over seeds 0-2, 0.014-0.037 distilling
  # the closed form; docs/toy_results.md).
  c.distill.teacher = "network"
  c.distill.rounds = 1600  # generator updates (the paper's "student grad updates")
  # The student's remaining error is its mode weights, and they are set by gradient noise (critic
  # and generator): at batch 256 the one-step ED ended at 1.7-2.1x the teacher's at 100 NFE over
  # seeds 0-2, at 1024 at 0.6-1.6x, for about 3x the time (docs/toy_results.md, "What limits the
  # one-step student").
  c.distill.batch_size = 1024
  c.distill.critic_steps = 5  # L: critic updates per generator update (paper: 5)
  c.distill.z_channels = 2  # 0 turns the noise input off
  # Std of z's initial input weights. 0 = the paper's zero initialisation (the generator starts as
  # the teacher's one-step x̂0 exactly); on this toy that start needs ~600 rounds to leave the
  # single-mode solution, 0.3 converges in ~400 (docs/toy_results.md).
  c.distill.z_init_scale = 0.3
  c.distill.n_steps = 1  # generator steps N
  # full_chain (I2SB variant; used here for this conditional toy too) | dmd2 (DDBM variant). dmd2
  # trains on the mixture of all steps' outputs; on this toy its 2-step student met the four modes
  # only in that mixture (step 1 two modes, step 2 the other two): docs/toy_results.md.
  c.distill.multistep = "full_chain"
  c.distill.intermediate = "marginal"
  c.distill.ema = 0.99
  # Both learning rates decay along a cosine to 5 % over the run (decay_steps 0 = the run's
  # length). The generator's Adam keeps momentum (b1 0.9): without it (b1 0) the raw generator's
  # parameters random-walk and its mode weights swing from round to round; the critic's decay
  # quietens its estimate of the generator's posterior mean at the end. Seeds 0 / 1 / 2: one-step
  # ED 0.021 / 0.014 / 0.016, against 0.042 / 0.045 / 0.029 with b1 0 and a constant critic lr
  # (docs/toy_results.md).
  c.distill.gen_optimizer = _adam(1e-3, b1=0.9, decay="cosine", final_lr_frac=0.05)
  c.distill.critic_optimizer = _adam(1e-3, decay="cosine", final_lr_frac=0.05)

  c.eval = ml_collections.ConfigDict()
  c.eval.teacher_nfes = (1, 2, 4, 16, 100)
  c.eval.teachers = ("network", "exact")  # which teachers to sample: the trained net, closed form
  c.eval.student_steps = (1, 2)
  # Held-out xT values. The student's ED differs from condition to condition (its mode weights do):
  # one model scored over independent held-out sets spreads by a std of 0.0076 with 16 conditions
  # and 0.0036 with 64 (its mean: 0.008), so compare settings over seeds, not on one run.
  c.eval.num_conditions = 64
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
