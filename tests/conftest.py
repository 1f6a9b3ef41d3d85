"""Test setup: 8 fake CPU devices (for sharding tests) must be requested before JAX starts."""
import os

# LLVM at -O0 for XLA:CPU: the suite compiles hundreds of small programs and on 2 cores compiling
# is most of its time; -O0 halves XLA:CPU's compile time (a toy pipeline: 61 -> 32 s of compile,
# 57 -> 35 s of CPU) and leaves the convolutions and matmuls to the same library kernels. What the
# tests check is the program, not LLVM's code quality; bench/ measures speed with the defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (compile-mode tests) takes a lock file per process; the parallel workers and the
# launcher subprocesses each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One persistent compilation cache for the whole test session, in-process and in the launcher
# subprocesses (tests pass it with --compilation_cache=$IBMD_TEST_JAX_CACHE): many tests compile
# the same tiny programs (a run and its restart, the reference run of a resume test), and on 2 CPU
# cores compiling is most of their time. Cached executables are XLA's own output, so results are
# bit-identical to a fresh compile.
import tempfile  # noqa: E402

_OWN_CACHE = "IBMD_TEST_JAX_CACHE" not in os.environ
os.environ.setdefault("IBMD_TEST_JAX_CACHE", tempfile.mkdtemp(prefix="ibmd_jax_test_cache_"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["IBMD_TEST_JAX_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE:
    import shutil

    shutil.rmtree(os.environ["IBMD_TEST_JAX_CACHE"], ignore_errors=True)
