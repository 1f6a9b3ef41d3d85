"""Test setup: 8 fake CPU devices (for sharding tests) must be requested before JAX starts."""
import os

# (LLVM at -O0 was tried for the whole suite: it halves the compile time of a toy pipeline, 57 ->
# 35 s of CPU, but the tests that train slowed more than that gained: the suite's CPU time went
# 1931 -> 2188 s, e.g. the MLP teacher test 31 -> 61 s. Only the local-pod tests use it.)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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
