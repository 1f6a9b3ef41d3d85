"""jax.distributed for the launcher: where the coordinator is, which process this is, timeouts.

`--config.distributed=True` makes the launcher call `initialize()` before anything touches a
device. On TPU pods, SLURM and Open MPI, JAX detects the coordinator and the process ids itself;
elsewhere (a multi-node GPU job started by hand, `launch/local_pod.py` on one machine) pass them:

  --coordinator_address=HOST:PORT --num_processes=N --process_id=I

or export JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (jax 0.10 reads only the
first of these itself; the launcher reads the other two). The timeouts (docs/multihost.md):

  --distributed_heartbeat_s  a process that sent no heartbeat for this long is dead: the
                             coordination service stops every other process of the run (JAX's
                             default 100 s; `launch/local_pod.py` uses 10 s)
  --distributed_init_s       how long the processes wait for each other at start (JAX: 300 s)
  --distributed_shutdown_s   how long a finishing process waits for the others at exit (JAX: 300 s)

On CPU, cross-process collectives use gloo (jax_cpu_collectives_implementation; jax 0.10's
default, set here explicitly unless JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise).
"""
from __future__ import annotations

import os
from typing import Optional

from absl import flags

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "jax.distributed coordinator HOST:PORT (process 0's host), for --config.distributed=True "
    "where JAX cannot detect it (default: $JAX_COORDINATOR_ADDRESS, else auto-detection).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes of the run (default: $JAX_NUM_PROCESSES, else auto).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id in [0, num_processes) (default: $JAX_PROCESS_ID, "
    "else auto).")
_HEARTBEAT = flags.DEFINE_integer(
    "distributed_heartbeat_s", 100,
    "Seconds without a heartbeat after which a process counts as dead and the others stop.")
_INIT = flags.DEFINE_integer(
    "distributed_init_s", 300, "Seconds the processes wait for each other at start.")
_SHUTDOWN = flags.DEFINE_integer(
    "distributed_shutdown_s", 300, "Seconds a finishing process waits for the others at exit.")

# What JAX's and gloo's errors say when another process of the run went away (killed, its host
# died or was preempted): the collectives fail at once ('Connection closed by peer', 'Connection
# reset'), the coordination service after the heartbeat timeout.
PEER_LOST_TEXTS = ("Gloo", "Connection closed by peer", "Connection reset by peer",
                   "heartbeat timeout", "stopped sending heartbeats", "coordination service",
                   "UNAVAILABLE", "DEADLINE_EXCEEDED", "Barrier timed out")


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    from ibmd_jax.errors import ConfigError
    raise ConfigError(f"${name}={value!r} is not a whole number: fix the variable") from None


def initialize() -> None:
  """jax.distributed.initialize with the flags' (or the environment's) settings."""
  import jax

  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  num = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else _env_int(
      "JAX_NUM_PROCESSES")
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else _env_int("JAX_PROCESS_ID")
  jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value, num_processes=num, process_id=pid,
      initialization_timeout=int(_INIT.value), heartbeat_timeout_seconds=int(_HEARTBEAT.value),
      shutdown_timeout_seconds=int(_SHUTDOWN.value))


def peer_lost(e: BaseException) -> bool:
  """Whether e is how a multi-process run sees another of its processes go away."""
  import jax

  if jax.process_count() < 2:
    return False
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if any(t in str(e) for t in PEER_LOST_TEXTS):
      return True
    e = e.__cause__ or e.__context__
  return False


def exit_peer_lost(e: BaseException) -> None:
  """One line instead of a traceback, then exit at once (os._exit): JAX's shutdown at exit would
  wait distributed_shutdown_s for the dead process and then abort with a C++ stack trace."""
  import sys

  import jax

  from ibmd_jax.errors import PeerLost

  first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  sys.stdout.flush()
  sys.stderr.write(
      f"error: process {jax.process_index()} of {jax.process_count()} lost contact with another "
      f"process of this run ({first[:300]}): a host died, was killed or was preempted. Restart "
      "every process with the same command: the run resumes from its last complete checkpoint\n")
  sys.stderr.flush()
  os._exit(PeerLost.exit_code)


def barrier(name: str) -> None:
  """Waits until every process of the run is here (through the coordination service, up to
  --distributed_init_s). gloo gives up on a peer that is 30 s late to the first collective of a
  device set; processes that start, import and compile at different speeds (a loaded host) meet
  here first, after the imports, before the run's first collective."""
  import jax
  from jax._src import distributed as jax_distributed

  client = jax_distributed.global_state.client
  if client is None or jax.process_count() < 2:
    return
  client.wait_at_barrier(f"ibmd_jax_{name}", int(_INIT.value) * 1000)
