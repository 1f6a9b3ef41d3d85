"""Tooling beside the ibmd_jax package: compile planning and search for TPU slices (aot, chips,
hlo, roofline, split_compile) and benchmark report statistics (bootstrap). It may import ibmd_jax;
nothing in ibmd_jax imports it (tests/tools/test_imports.py checks both)."""
