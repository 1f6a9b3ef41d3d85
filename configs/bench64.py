"""The real-image quality benchmark: 64x64 crops of the scikit-image photographs (no download), a
teacher trained from scratch, distilled by IBMD, scored by PSNR / SSIM on held-out photographs.

  python -m launch.main --config=configs/bench64.py:sr4 --workdir=/tmp/bench_sr4
  python -m launch.main --config=configs/bench64.py:sr4,2step --workdir=/tmp/bench_sr4_2step
  python -m launch.main --config=configs/bench64.py:sr4,tiny --workdir=/tmp/bench_tiny  # CPU

Variants (further options): 'cpu32' (32x32, the 2-core CPU benchmark of docs/results.md),
'gpu9' (64x64, a schedule sized for one 9-minute H200 call for all three setups, below), 'tiny'.

Tasks (the first option): sr4 (I2SB bridge, 4x bicubic super-resolution), jpeg10 (I2SB, JPEG
quality 10), inpaint (I2SB OT-ODE bridge, 32x32 centre hole, no noise input, as the paper's I2SB
inpainting), sr4_vp (DDBM VP bridge conditioned on xT, 4x bicubic). Further options: '2step' (a
2-step generator instead of 1 step; any 'Nstep' works) and 'tiny' (the CPU variant of configs/images.py).
The teacher (a 64-channel ADM UNet, levels at 64/32/16, attention at 16 and 8) trains in the same
workdir first; a teacher already there is reused, so the 1- and 2-step runs can share one by
pointing --config.teacher.checkpoint=<first workdir>/teacher.
"""
from configs import images, unets

TASKS = {
    "sr4": dict(family="i2sb", degradation="sr4_bicubic"),
    "jpeg10": dict(family="i2sb", degradation="jpeg10"),
    "inpaint": dict(family="i2sb", degradation="inpaint_center", hole=32, z=False,
                    bridge=dict(beta_max=1.0, ot_ode=True)),
    "sr4_vp": dict(family="ddbm", degradation="sr4_bicubic"),
}

# The networks (configs/unets.py): the 64x64 teacher and the CPU benchmark's at 32x32.
UNET = unets.BENCH64
CPU32_UNET = unets.CPU32


def get_config(arg: str = "sr4"):
  task, _, rest = (arg or "sr4").partition(",")
  if task not in TASKS:
    raise ValueError(f"unknown bench64 task {task!r}; choose from {sorted(TASKS)}")
  opts = [o.strip() for o in rest.split(",") if o.strip()]
  cpu32, gpu9 = "cpu32" in opts, "gpu9" in opts
  tiny, n_steps = images.parse_arg(",".join(o for o in opts if o not in ("cpu32", "gpu9")))
  t = TASKS[task]
  layout = "legacy" if t["family"] == "i2sb" else "qkv_first"
  data = dict(kind="skimage", image_size=64, degradation=t["degradation"], num_workers=4)
  if "hole" in t:
    data["hole"] = t["hole"]
  c = images.make(family=t["family"], model=dict(UNET, attention_layout=layout), data=data,
                  rounds=2000, n_steps=n_steps or 1, z=t.get("z", True), bridge=t.get("bridge"),
                  teacher_source="train", teacher_steps=20_000, teacher_batch=64, teacher_lr=2e-4,
                  batch_size=64, lr=5e-5,
                  # I2SB's 1000-step grid allows at most 999 steps (its own default NFE)
                  teacher_nfes=(1, 2, 4, 10, 100, 999 if t["family"] == "i2sb" else 1000),
                  student_steps=(1, 2), num_images=256, eval_batch=128, dtype="bfloat16")
  c.teacher.ema = 0.999
  c.teacher.optimizer.warmup_steps = 500
  c.teacher.optimizer.decay = "constant"
  c.checkpoint.every = 500
  if cpu32:
    _cpu32(c, n_steps or 1, "hole" in t)
  if gpu9:
    _gpu9(c)
  if tiny:
    images.shrink(c, hole=8 if "hole" in t else None)
  return c


def _cpu32(c, n_steps: int, inpaint: bool) -> None:
  """The 2-core CPU benchmark (docs/results.md): 32x32 crops, a 32-channel UNet, float32."""
  c.data.image_size = c.model.image_size = 32
  if inpaint:
    c.data.hole = 16
  c.data.num_workers = 0
  c.model.update(CPU32_UNET)
  c.model.dtype = "float32"
  c.model.conv_grad = "matmul"  # at batch 32 not slower than xla (docs/benchmarks.md, CPU section)
  c.log_every = 50
  c.teacher.steps = 400
  c.teacher.batch_size = 32
  # EMAs sized to runs this short: after 400 steps 0.98^400 = 0.03 % of the random init is left
  # (0.995 left 13.5 %); after 50 rounds 0.9^50 = 0.5 % of the initial generator (0.99: 60.5 %)
  c.teacher.ema = 0.98
  c.teacher.optimizer.lr = 1e-3
  c.teacher.optimizer.warmup_steps = 50
  c.distill.rounds = 50
  c.distill.batch_size = 8
  c.distill.ema = 0.9
  c.distill.gen_optimizer.lr = c.distill.critic_optimizer.lr = 5e-4
  c.checkpoint.every = 100
  c.eval.num_images = 512
  c.eval.batch_size = 32
  c.eval.teacher_nfes = (1, 2, 4, 10, 100)
  c.eval.grid_nfes = (1, 100)


# The one-call H200 variant ('gpu9', bench/run_gpu.sh bench64): three setups' stages in 9 minutes,
# sized with bench/flops.py's FLOP model at an assumed utilisation and per-stage overhead (util,
# overhead_s; tests/tools/test_bench64.py re-derives the budget). The FLOP counts and the
# reasoning: docs/results.md, the gpu9 paragraph. If the assumptions are off, the call ends with
# exit 75 after saving, and the same command again continues.
GPU9 = dict(teacher_steps=1500, rounds=100, batch=64, util=0.20, peak_tflops=989.0,
            overhead_s=20.0, stages=6)


def _gpu9(c) -> None:
  c.teacher.steps = GPU9["teacher_steps"]
  c.teacher.batch_size = c.distill.batch_size = GPU9["batch"]
  c.teacher.optimizer.warmup_steps = 100
  c.teacher.ema = 0.995
  c.distill.rounds = GPU9["rounds"]
  c.distill.ema = 0.95  # 0.95^100: 0.6 % of the initial generator left (0.99 would leave 37 %)
  c.checkpoint.every = 1000
  c.eval.num_images = 512
  c.eval.batch_size = 256
  c.eval.teacher_nfes = (1, 2, 4, 10, 100)
  c.eval.grid_nfes = (1, 100)
