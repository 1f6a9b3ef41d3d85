"""DDBM edges -> handbags 64x64 -> one-step IBMD generator (paper Table 5); ':2step' for the 2-step
generator (300 rounds).

Teacher, once: convert DDBM's e2h_ema_0.9999_420000.pt:
  python -m launch.convert --src=PATH.pt --family=ddbm --preset=ddbm_e2h64 \
      --workdir=./teachers/ddbm_e2h64
(writes ./teachers/ddbm_e2h64/teacher, the config's teacher.checkpoint).
Data: pix2pix edges2handbags unpacked to ./data/edges2handbags/{train,val}/*.jpg (or
--config.data.path=...).

  python -m launch.main --config=configs/ddbm_e2h64.py --workdir=/tmp/ddbm_e2h64
  # the CPU variant (a few minutes on two CPU cores, most of it compilation):
  python -m launch.main --config=configs/ddbm_e2h64.py:tiny --workdir=/tmp/ddbm_e2h64_tiny

Settings: configs/images.py (SETUPS['ddbm_e2h64']).
"""
from configs import images


def get_config(arg: str = ""):
  return images.paper("ddbm_e2h64", arg)
