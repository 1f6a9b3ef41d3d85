"""DBIM's class-conditional centre-inpainting teacher, ImageNet 256 -> 4-step IBMD generator
(DMD2 variant, 1:1 critic:generator, lr 3e-6), evaluated at 1, 2 and 4 steps (paper Table 6).

Teacher, once: convert DBIM's imagenet256_inpaint_ema_0.9999_400000.pt:
  python -m launch.convert --src=PATH.pt --family=dbim --preset=dbim_imagenet256_inpaint \
      --workdir=./teachers/dbim_inpaint256
(writes ./teachers/dbim_inpaint256/teacher, the config's teacher.checkpoint).
Data: ImageNet as a local TFDS ArrayRecord dataset (never downloaded by the pipeline):
  tfds build imagenet2012 --data_dir=DIR --manual_dir=DIR_WITH_ARCHIVES --file_format=array_record
then pass --config.data.tfds_data_dir=DIR.

  python -m launch.main --config=configs/dbim_inpaint256.py --workdir=/tmp/dbim_inpaint256 \
      --config.data.tfds_data_dir=DIR
  # the CPU variant (a few minutes on two CPU cores, most of it compilation):
  python -m launch.main --config=configs/dbim_inpaint256.py:tiny --workdir=/tmp/dbim_inpaint256_tiny

Settings: configs/images.py (SETUPS['dbim_inpaint256']).
"""
from configs import images


def get_config(arg: str = ""):
  return images.paper("dbim_inpaint256", arg)
