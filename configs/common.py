"""Config building blocks shared by all configs: every option appears with its default, so a
typo in a command-line override (--config.bridge.beta_mx=1) fails before any work is done."""
import dataclasses

import ml_collections

from ibmd_jax.bridges import Bridge


def bridge_config(**overrides) -> ml_collections.ConfigDict:
  fields = {f.name: f.default for f in dataclasses.fields(Bridge)}
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"unknown bridge option(s) {sorted(unknown)}")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)
