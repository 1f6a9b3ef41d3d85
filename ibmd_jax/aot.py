"""Moved (issue 33): compile mode is tooling and lives outside the package, in tools/aot.py."""
raise ImportError("ibmd_jax.aot moved to tools.aot (from tools import aot); from the command line "
                  "compile mode is unchanged: python -m launch.main ... --config.mode=compile")
