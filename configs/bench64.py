"""The real-image quality benchmark: 64x64 crops of the scikit-image photographs (no download), a
teacher trained from scratch, distilled by IBMD, scored by PSNR / SSIM on held-out photographs.

  python -m launch.main --config=configs/bench64.py:sr4 --workdir=/tmp/bench_sr4
  python -m launch.main --config=configs/bench64.py:sr4,2step --workdir=/tmp/bench_sr4_2step
  python -m launch.main --config=configs/bench64.py:sr4,tiny --workdir=/tmp/bench_tiny  # CPU

Tasks (the first option): sr4 (I2SB bridge, 4x bicubic super-resolution), jpeg10 (I2SB, JPEG
quality 10), inpaint (I2SB OT-ODE bridge, 32x32 centre hole, no noise input, as the paper's I2SB
inpainting), sr4_vp (DDBM VP bridge conditioned on xT, 4x bicubic). Further options: '2step' (a
2-step generator instead of 1 step; any 'Nstep' works) and 'tiny' (the CPU variant of configs/images.py).
The teacher (a 64-channel ADM UNet, levels at 64/32/16, attention at 16 and 8) trains in the same
workdir first; a teacher already there is reused, so the 1- and 2-step runs can share one by
pointing --config.teacher.checkpoint=<first workdir>/teacher.
"""
from configs import images

TASKS = {
    "sr4": dict(family="i2sb", degradation="sr4_bicubic"),
    "jpeg10": dict(family="i2sb", degradation="jpeg10"),
    "inpaint": dict(family="i2sb", degradation="inpaint_center", hole=32, z=False,
                    bridge=dict(beta_max=1.0, ot_ode=True)),
    "sr4_vp": dict(family="ddbm", degradation="sr4_bicubic"),
}

UNET = dict(model_channels=64, out_channels=3, num_res_blocks=2, channel_mult=(1, 2, 2),
            attention_resolutions=(4, 8),  # downsampling factors: resolutions 16 and 8 at 64
            num_heads=4, num_head_channels=32, num_heads_upsample=-1, dropout=0.0,
            num_classes=None, use_scale_shift_norm=True, resblock_updown=True)


def get_config(arg: str = "sr4"):
  task, _, rest = (arg or "sr4").partition(",")
  if task not in TASKS:
    raise ValueError(f"unknown bench64 task {task!r}; choose from {sorted(TASKS)}")
  tiny, n_steps = images.parse_arg(rest)
  t = TASKS[task]
  layout = "legacy" if t["family"] == "i2sb" else "qkv_first"
  data = dict(kind="skimage", image_size=64, degradation=t["degradation"], num_workers=4)
  if "hole" in t:
    data["hole"] = t["hole"]
  c = images.make(family=t["family"], model=dict(UNET, attention_layout=layout), data=data,
                  rounds=2000, n_steps=n_steps or 1, z=t.get("z", True), bridge=t.get("bridge"),
                  teacher_source="train", teacher_steps=20_000, teacher_batch=64, teacher_lr=2e-4,
                  batch_size=64, lr=5e-5, teacher_nfes=(1, 2, 4, 10, 100, 1000),
                  student_steps=(1, 2), num_images=256, eval_batch=128, dtype="bfloat16")
  c.teacher.ema = 0.999
  c.teacher.optimizer.warmup_steps = 500
  c.teacher.optimizer.decay = "constant"
  c.checkpoint.every = 500
  if tiny:
    images.shrink(c, hole=8 if "hole" in t else None)
  return c
