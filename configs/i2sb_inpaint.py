"""I2SB centre 128x128 inpainting, ImageNet 256 -> 4-step IBMD generator without noise input,
evaluated at 1, 2 and 4 steps (paper Table 6). OT-ODE bridge, beta_max 1.0, loss on the hole,
known pixels pasted.

Teacher, once: convert I2SB's inpaint-center checkpoint (results/inpaint-center/latest.pt):
  python -m launch.convert --src=PATH.pt --family=i2sb --preset=i2sb_imagenet256 \
      --workdir=./teachers/i2sb_inpaint
(writes ./teachers/i2sb_inpaint/teacher, the config's teacher.checkpoint).
Data: ImageNet as a local TFDS ArrayRecord dataset (never downloaded by the pipeline):
  tfds build imagenet2012 --data_dir=DIR --manual_dir=DIR_WITH_ARCHIVES --file_format=array_record
then pass --config.data.tfds_data_dir=DIR.

  python -m launch.main --config=configs/i2sb_inpaint.py --workdir=/tmp/i2sb_inpaint \
      --config.data.tfds_data_dir=DIR
  # the CPU variant (a few minutes on two CPU cores, most of it compilation):
  python -m launch.main --config=configs/i2sb_inpaint.py:tiny --workdir=/tmp/i2sb_inpaint_tiny

Settings: configs/images.py (SETUPS['i2sb_inpaint']).
"""
from configs import images


def get_config(arg: str = ""):
  return images.paper("i2sb_inpaint", arg)
