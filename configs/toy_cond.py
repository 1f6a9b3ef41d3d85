"""Toy pipeline, conditional (DDBM-style) teacher: train an MLP teacher on a 4-mode Gaussian-mixture
coupling with a VP bridge, distill it with IBMD to a one-step generator, evaluate against the exact
conditional p(x0 | xT).

  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/ibmd_toy
  python -m launch.main --config=configs/toy_cond.py --workdir=/tmp/ibmd_toy --config.distill.n_steps=2
"""
from configs import base


def get_config():
  c = base.get_config()
  c.data.kind = "toy"
  c.data.coupling = "cond_modes"  # cond_modes | cond_uneven | paired | paired_blur (ibmd_jax.toy)
  c.data.dim = 2
  c.conditional = True  # DDBM-style: xT is a network input
  # λ(t) = 1 (a plain x0-MSE) for the teacher, the critic and both generator terms. The teacher's
  # usual 1/c_out² weighting is just as valid for IBMD, but on this toy it makes the one-step
  # generator misweight or collapse the modes (docs/toy_results.md); any λ > 0 keeps the
  # objective's minimiser.
  c.bridge.kind = "vp"
  c.bridge.precond = "edm"
  c.bridge.weighting = "uniform"
  # The demo's budget is 5 minutes on 2 CPU cores: width 128, a 2000-step teacher and 600 rounds
  # at batch 1024. Its wall time and quality, and what it trades against the earlier, longer
  # default: docs/toy_results.md, "The 5-minute demo". time_scale stays None: 1/250 from the VP
  # bridge.
  c.model.width = 128
  c.model.depth = 3

  c.teacher.steps = 2000
  c.teacher.batch_size = 512
  c.teacher.ema = 0.999
  c.teacher.optimizer.lr = 1e-3
  c.teacher.optimizer.b1 = 0.9
  c.teacher.save_every = 0  # only on SIGTERM / stop_after_s

  # network: distil the trained teacher, as a user does; exact: the closed-form x̂0* (toys only).
  # The critic is a network of the teacher's architecture, so against the trained teacher its
  # approximation error partly cancels in x̂0^φ − x̂0*; against the closed form it is all bias
  # (docs/toy_results.md).
  c.distill.teacher = "network"
  c.distill.rounds = 600
  # The student's remaining error is its mode weights, and they are set by gradient noise (critic
  # and generator): larger batches help more than more rounds (docs/toy_results.md, "What limits
  # the one-step student").
  c.distill.batch_size = 1024
  c.distill.critic_steps = 5  # L: critic updates per generator update (paper: 5)
  c.distill.z_channels = -1  # as many noise channels as the data has (2)
  # Std of z's initial input weights. 0 = the paper's zero initialisation (the generator starts as
  # the teacher's one-step x̂0 exactly); on this toy that start needs ~600 rounds to leave the
  # single-mode solution, 0.3 converges in ~400 (docs/toy_results.md).
  c.distill.z_init_scale = 0.3
  c.distill.n_steps = 1
  # full_chain (I2SB variant; used here for this conditional toy too) | dmd2 (DDBM variant). dmd2
  # trains on the mixture of all steps' outputs; on this toy its 2-step student met the four modes
  # only in that mixture (docs/toy_results.md).
  c.distill.multistep = "full_chain"
  c.distill.ema = 0.99
  # Both learning rates decay along a cosine to 5 % over the run (decay_steps 0 = the run's
  # length). The generator's Adam keeps momentum (b1 0.9): without it the raw generator's
  # parameters random-walk and its mode weights swing from round to round (docs/toy_results.md).
  c.distill.gen_optimizer.update(dict(lr=1e-3, b1=0.9, b2=0.99, decay="cosine",
                                      final_lr_frac=0.05))
  c.distill.critic_optimizer.update(dict(lr=1e-3, b1=0.0, b2=0.99, decay="cosine",
                                         final_lr_frac=0.05))

  c.eval.teacher_nfes = (1, 2, 4, 16, 100)
  c.eval.teachers = ("network", "exact")  # the trained net and the closed form
  c.eval.student_steps = (1,)
  # Held-out xT values. The student's ED differs from condition to condition (its mode weights do):
  # one model scored over independent held-out sets spreads (docs/toy_results.md gives the spread
  # at 64 conditions), so compare settings over seeds, not on one run.
  c.eval.num_conditions = 64
  c.eval.samples_per_condition = 400
  c.checkpoint.every = 500
  return c
