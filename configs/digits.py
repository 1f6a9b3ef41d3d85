"""The handwritten-digits benchmark (issue 38): 5,000 real MNIST digits (the `digits` extra, no
download), three setups in the paper's shape, sized to run on 2 CPU cores (bench/digits.py).

  python -m launch.main --config=configs/digits.py:sr4 --workdir=/tmp/digits_sr4
  python bench/digits.py --root=/tmp/digits     # all stages of all setups, then --report

Tasks (the first option):
  sr4      4x bicubic super-resolution, I2SB bridge (β_max 0.3), unconditional teacher, z input
  inpaint  centre 14x14 inpainting, I2SB bridge (β_max 0.3, stochastic, so that restorations of
           an ambiguous hole differ), no noise input, a 4-step generator trained on the whole
           chain and evaluated at 1, 2 and 4 steps (the paper's I2SB inpainting setup)
  sr4_vp   4x bicubic super-resolution, DDBM VP bridge, conditional on xT, EDM preconditioning
           with cov_xy = σ_data²/2 (DDBM's own option: with a zero-initialised head the teacher then
           starts at 0.5·xT instead of grey, 0), z input
Further options: 'Nstep' (the generator's steps), 'tiny' (the reduced run of tests/test_digits.py:
a 2-level UNet at 32 channels, fewer steps and rounds, 200 held-out digits).

The recipe measured in issue 38 on 28² digits (2 CPU cores): a 32-channel 3-level UNet without
attention; teachers trained from scratch with AdamW 1e-3, batch 32, 300 steps; IBMD with z (1
channel, zero-initialised), L = 5 critic steps per generator step, batch 8, Adam(b1 0, b2 0.99)
1e-4 for generator and critic, EMA 0.99, 200 rounds. Every family uses AdamW / Adam here, not the
DDBM code base's RAdam: optax's rectification with b2 0.999 scales the first hundreds of steps by
0.15-0.43 (issue 38), a mean factor ≈ 0.3 over a 300-step run, which left the CPU benchmark's DDBM
teacher and student barely trained.
"""
from configs import images

TASKS = {
    "sr4": dict(family="i2sb", degradation="sr4_bicubic", z=True),
    "inpaint": dict(family="i2sb", degradation="inpaint_center", z=False, n_steps=4,
                    student_steps=(1, 2, 4)),
    "sr4_vp": dict(family="ddbm", degradation="sr4_bicubic", z=True,
                   bridge=dict(cov_xy=0.125)),  # σ_data²/2 with σ_data 0.5
}

UNET = dict(model_channels=32, out_channels=1, num_res_blocks=1, channel_mult=(1, 2, 2),
            attention_resolutions=(), num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
            dropout=0.0, num_classes=None, use_scale_shift_norm=True, resblock_updown=True)
TINY_UNET = dict(model_channels=32, channel_mult=(1, 1))  # GroupNorm: 32 groups
IMAGE_SIZE = 28


def get_config(arg: str = "sr4"):
  task, _, rest = (arg or "sr4").partition(",")
  if task not in TASKS:
    raise ValueError(f"unknown digits task {task!r}; choose from {sorted(TASKS)}")
  tiny, n_steps = images.parse_arg(rest)
  t = TASKS[task]
  n_steps = n_steps or t.get("n_steps", 1)
  layout = "legacy" if t["family"] == "i2sb" else "qkv_first"
  c = images.make(family=t["family"], model=dict(UNET, attention_layout=layout),
                  data=dict(kind="digits", image_size=IMAGE_SIZE, channels=1,
                            degradation=t["degradation"], flip=False, num_workers=0),
                  rounds=200, n_steps=n_steps, z=t["z"], bridge=t.get("bridge"),
                  teacher_source="train", teacher_steps=300, teacher_batch=32, teacher_lr=1e-3,
                  batch_size=8, lr=1e-4, teacher_nfes=(1, 2, 4, 10),
                  student_steps=t.get("student_steps", (1,)), num_images=1000, eval_batch=100,
                  dtype="float32")
  c.model.conv_grad = "matmul"  # 3x faster weight gradients on XLA:CPU (ibmd_jax/models/conv.py)
  c.log_every = 25
  c.teacher.optimizer = images.base.optimizer_config("adamw", 1e-3, warmup_steps=20)
  # 0.98^300 = 0.2 % of the random initialisation left in the EMA after 300 steps
  c.teacher.ema = 0.98
  c.teacher.save_every = 100
  c.distill.critic_steps = 5
  c.distill.z_channels = -1 if t["z"] else 0  # -1: as many as the data's, here 1
  c.distill.gen_optimizer = images.base.optimizer_config("adam", 1e-4, b1=0.0, b2=0.99)
  c.distill.critic_optimizer = images.base.optimizer_config("adam", 1e-4, b1=0.0, b2=0.99)
  c.distill.ema = 0.99
  c.checkpoint.every = 50
  c.eval.metrics = ("psnr", "ssim")  # the rest (classifier CA / FD, diversity): bench/digits.py
  c.eval.grid_nfes = (1, 10)
  # diversity (bench/digits.py): the std over this many restorations with other noise, per input,
  # on the first diversity_inputs held-out digits
  c.eval.diversity_samples = 4
  c.eval.diversity_inputs = 200
  if tiny:
    c.model.update(TINY_UNET)
    c.log_every = 10
    c.teacher.steps = 150
    c.teacher.batch_size = 16
    c.teacher.ema = 0.95
    c.distill.rounds = 40
    c.distill.critic_steps = 2
    c.distill.ema = 0.9
    c.distill.gen_optimizer.lr = c.distill.critic_optimizer.lr = 5e-4
    c.checkpoint.every = 1000
    c.eval.num_images = 200
    c.eval.teacher_nfes = (1, 4)
    c.eval.diversity_inputs = 50
    c.eval.batch_size = 100
  return c
