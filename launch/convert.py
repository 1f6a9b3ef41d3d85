r"""Converts an official PyTorch teacher (I2SB, DDBM, DBIM) into an Orbax teacher checkpoint.

  python -m launch.convert --src=ema_0.9999_100000.pt --family=ddbm --preset=ddbm_e2h64 \
      --workdir=/tmp/e2h
  python -m launch.convert --src=small.npz --family=i2sb --adm_kwargs=small.json --workdir=/tmp/s

Writes <workdir>/teacher/ (params + teacher.json, read by ibmd_jax.teacher_io.load_teacher) and
<workdir>/teacher/conversion.json: which torch key became which Flax param, with both shapes.
A .npz source holds 'param/<torch key>' arrays (as the test fixtures) or plain torch keys.
"""
import json
import os
import sys

from absl import app, flags

_SRC = flags.DEFINE_string("src", None, "PyTorch checkpoint (.pt/.pth) or .npz state dict.")
_FAMILY = flags.DEFINE_enum("family", None, ["i2sb", "ddbm", "dbim"], "Teacher family.")
_PRESET = flags.DEFINE_string("preset", None, "UNet preset, a key of ibmd_jax.models.unet.PRESETS.")
_ADM_KWARGS = flags.DEFINE_string(
    "adm_kwargs", None, "Instead of --preset: a JSON file of the PyTorch UNetModel kwargs (at top "
    "level or under 'kwargs', as the fixtures' .json / .keys.json files).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Run directory; the teacher goes to <workdir>/teacher.")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Take EMA weights when the checkpoint holds both.")
_PRINT_MAPPING = flags.DEFINE_bool("print_mapping", True,
                                   "Print every source key -> Flax param line.")
flags.mark_flags_as_required(["src", "family", "workdir"])
flags.mark_flags_as_mutual_exclusive(["preset", "adm_kwargs"], required=True)


def teacher_meta(kwargs: dict, report: dict, source: str, picked: str) -> dict:
  """teacher.json contents: the model config build_model takes, plus provenance."""
  model = {"name": "unet"}
  model.update({k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
  return {
      "model": model,
      "family": report["family"],
      "source": os.path.abspath(source),
      "source_weights": picked,
      "c_noise": report["c_noise"],
      "in_channels": report["in_channels"],
      "n_params": report["n_params"],
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging

  from ibmd_jax import paths
  from ibmd_jax import teacher_io as checkpoint
  from ibmd_jax import convert
  from ibmd_jax.models.unet import PRESETS

  # Orbax logs every save step at INFO; keep the console to the report unless asked.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)

  if _PRESET.value is not None:
    if _PRESET.value not in PRESETS:
      raise app.UsageError(f"unknown --preset={_PRESET.value!r}; choose from {sorted(PRESETS)}")
    kwargs = dict(PRESETS[_PRESET.value])
  else:
    with open(_ADM_KWARGS.value) as f:
      adm = json.load(f)
    kwargs = convert.config_from_adm_kwargs(adm.get("kwargs", adm))
  from ibmd_jax.errors import RunError
  try:  # the destination first: a bucket that cannot be written is said before any work
    paths.check_workdir(_WORKDIR.value)
  except RunError as e:
    sys.exit(f"error: {e}")
  try:
    state_dict, picked = convert.load_state_dict(_SRC.value, use_ema=_USE_EMA.value)
    params, report = convert.convert(state_dict, kwargs, _FAMILY.value)
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"error: cannot convert {_SRC.value}: {e}")

  if _PRINT_MAPPING.value:
    for e in report["mapping"]:
      p = e["qkv_permute"]
      note = f" (qkv {p['from']}->{p['to']}, {p['heads']} heads)" if p else ""
      print(f"{e['source']:<50s} {str(e['source_shape']):<22s} -> {e['target']:<45s} "
            f"{e['target_shape']} {e['transform']}{note}")
  for k in report["ignored_keys"]:
    print(f"ignored (not a UNet weight): {k}")
  print(f"{report['n_source_keys']} source keys -> {len(report['mapping'])} Flax params "
        f"({report['n_params']:,} values), every key used once and every param filled; "
        f"weights: {picked}; family {report['family']}, c_noise convention {report['c_noise']}, "
        f"{report['in_channels']} input channels")

  directory = paths.join(_WORKDIR.value, "teacher")  # a local folder or gs://bucket/...
  checkpoint.save_teacher(directory, params, teacher_meta(kwargs, report, _SRC.value, picked))
  paths.write_text(paths.join(directory, "conversion.json"), json.dumps(
      dict(report, source=os.path.abspath(_SRC.value), source_weights=picked), indent=1))
  print(f"teacher written to {directory}")


if __name__ == "__main__":
  app.run(main)
