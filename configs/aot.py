"""Compile mode's settings (``--config.mode=compile``, tools/aot.py): the config's ``aot`` section.
Tooling, not the model or the method: configs/base.py includes it so that every config has every
key and ``--config.aot.<key>=...`` works on any of them. Measured effects of these options (compile
times, memory) are in docs/tpu.md."""
import ml_collections


def aot_config() -> ml_collections.ConfigDict:
  # The TPU slice (libtpu's topology names: v5e:4x4, v5p:4x4x4, v6e:4x4, v4:2x2x2) and which
  # programs to compile (teacher_step, round, teacher_sampler, student).
  # search=True compiles search_program for every mesh (data x fsdp), remat policy and per-chip
  # batch and prints the fitting choice with the best estimated images/s as overrides; compiled
  # candidates are kept in <workdir>/aot_search.json (a rerun skips them) and search_budget_s
  # (0 = none) stops it between compiles.
  return ml_collections.ConfigDict(dict(
      topology="v5e:2x2",
      programs=("teacher_step", "round", "teacher_sampler", "student"),
      search=False, search_program="round",
      search_batches=(1, 2, 4, 8, 16, 32),
      search_remat=("none", "full"), search_fsdp=(),
      # the round's frozen-teacher dtype and microbatches, tried in order where the earlier do
      # not fit (e.g. ("float32", "bfloat16"), (1, 2)); empty: the config's own value
      search_teacher_dtype=(), search_microbatches=(),
      search_budget_s=0.0,
      # compile the candidates at XLA's exec_time_optimization_effort=-1 (faster, memory slightly
      # understated: docs/tpu.md, "What cuts it"), then the best fitting at the default
      search_quick=False,
      # dump each compile (<workdir>/xla_dump) and report where its time went (XLA passes, backend)
      pass_times=False,
      # a split round's two programs (distill.split_round): 2 compile at once, 1 one after the
      # other (half the host memory), 0 = 2 where the host has >= 64 GiB free
      compile_threads=0))
