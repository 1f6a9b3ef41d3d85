"""DDBM surface normals -> image, DIODE outdoor 256x256 -> one-step IBMD generator (paper Table 5);
':2step' for the 2-step generator (500 rounds).

Teacher, once: convert DDBM's diode_ema_0.9999_440000.pt:
  python -m launch.convert --src=PATH.pt --family=ddbm --preset=ddbm_diode256 \
      --workdir=./teachers/ddbm_diode256
(writes ./teachers/ddbm_diode256/teacher, the config's teacher.checkpoint).
Data: DIODE outdoor as ./data/diode_outdoor/{train,val}/**/NAME.png + NAME_normal.npy (DBIM's
preprocessing; or --config.data.path=...).

  python -m launch.main --config=configs/ddbm_diode256.py --workdir=/tmp/ddbm_diode256
  # the CPU variant (a few minutes on two CPU cores, most of it compilation):
  python -m launch.main --config=configs/ddbm_diode256.py:tiny --workdir=/tmp/ddbm_diode256_tiny

Settings: configs/images.py (SETUPS['ddbm_diode256']).
"""
from configs import images


def get_config(arg: str = ""):
  return images.paper("ddbm_diode256", arg)
