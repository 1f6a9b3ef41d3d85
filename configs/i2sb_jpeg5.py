"""I2SB JPEG restoration, quality 5, ImageNet 256 -> one-step IBMD generator (paper Table 2).

Teacher, once: convert I2SB's jpeg-5 checkpoint (results/jpeg-5/latest.pt):
  python -m launch.convert --src=PATH.pt --family=i2sb --preset=i2sb_imagenet256 \
      --workdir=./teachers/i2sb_jpeg5
(writes ./teachers/i2sb_jpeg5/teacher, the config's teacher.checkpoint).
Data: ImageNet as a local TFDS ArrayRecord dataset (never downloaded by the pipeline):
  tfds build imagenet2012 --data_dir=DIR --manual_dir=DIR_WITH_ARCHIVES --file_format=array_record
then pass --config.data.tfds_data_dir=DIR.

  python -m launch.main --config=configs/i2sb_jpeg5.py --workdir=/tmp/i2sb_jpeg5 \
      --config.data.tfds_data_dir=DIR
  # the CPU variant (a few minutes on two CPU cores, most of it compilation):
  python -m launch.main --config=configs/i2sb_jpeg5.py:tiny --workdir=/tmp/i2sb_jpeg5_tiny

Settings: configs/images.py (SETUPS['i2sb_jpeg5']).
"""
from configs import images


def get_config(arg: str = ""):
  return images.paper("i2sb_jpeg5", arg)
