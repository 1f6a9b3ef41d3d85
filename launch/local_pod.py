r"""A pod in miniature: N JAX processes of the launcher on this machine, CPU devices each.

  python -m launch.local_pod --num_processes=2 --devices_per_process=4 -- \
      --config=configs/toy_cond.py --workdir=/tmp/pod_run [--config.<key>=<value> ...]

Each process runs `python -m launch.main <args> --config.distributed=True` with its own
`--process_id`, a free coordinator port on 127.0.0.1, `--distributed_heartbeat_s` (10 s here: a
killed process is noticed in seconds, not JAX's default 100 s), gloo CPU collectives and
XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>. All share the workdir,
as the hosts of a pod share a filesystem. Every output line is prefixed with [p<i>]; with
--log_dir each process's output goes to <log_dir>/p<i>.log instead. SIGTERM / Ctrl-C is passed
to every process (a maintenance event: they save one checkpoint and exit with 143). The exit code
is the first nonzero one of the processes (0 when all succeed; 128 + S for one ended by signal S).

From Python (tests/test_multiprocess.py): `pod = start(2, 4, args, log_dir=...)`,
`pod.wait(timeout)`, `pod.signal(signal.SIGTERM)`, `pod.procs[1].kill()`.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  try:
    import portpicker
    return portpicker.pick_unused_port()
  except ImportError:  # the OS's choice of a free port
    import socket
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      return s.getsockname()[1]


def process_env(devices: int, base: Optional[dict] = None) -> dict:
  """The environment of one local process: CPU only, `devices` fake devices, gloo collectives."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo")
  env["PYTHONUNBUFFERED"] = "1"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)  # the flags say it; a stale variable would not
  return env


@dataclasses.dataclass
class Pod:
  procs: list
  logs: list  # each process's log path ('' when its output is streamed)
  port: int
  started: float

  def signal(self, sig: int, which: Optional[Sequence[int]] = None):
    for i in (range(len(self.procs)) if which is None else which):
      if self.procs[i].poll() is None:
        self.procs[i].send_signal(sig)

  def wait(self, timeout: Optional[float] = None) -> list:
    """Exit codes of every process (None for one still running at the timeout)."""
    end = None if timeout is None else time.time() + timeout
    codes = []
    for p in self.procs:
      try:
        codes.append(p.wait(None if end is None else max(end - time.time(), 0.01)))
      except subprocess.TimeoutExpired:
        codes.append(None)
    return codes

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    for p in self.procs:
      p.wait()

  def output(self, i: int) -> str:
    with open(self.logs[i], errors="replace") as f:
      return f.read()


def _pump(stream, prefix: str):
  for line in iter(stream.readline, b""):
    sys.stdout.write(prefix + line.decode(errors="replace"))
    sys.stdout.flush()


def start(num_processes: int, devices_per_process: int, args: Sequence[str],
          log_dir: Optional[str] = None, heartbeat_s: int = 10, env: Optional[dict] = None,
          port: Optional[int] = None, module: str = "launch.main") -> Pod:
  """Starts the processes (see the module doc); returns at once."""
  port = port or free_port()
  procs, logs = [], []
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  if not any(a.startswith("--compilation_cache") for a in args):
    # JAX's persistent cache never serves process 1, ... on CPU: it is written by process 0 only,
    # and a CPU program's cache key holds the topology fingerprint of the process that compiles
    # it, which differs from process to process (jax 0.10: each process but 0 misses every
    # program, checked with jax_explain_cache_misses). So process 0 loads what the others compile,
    # and one 30 s behind at a collective is dropped by gloo ("Gloo context initialization
    # failed: ... GetKeyValue() timed out"). Without the cache all processes compile alike and
    # stay in step.
    args = [*args, "--compilation_cache=off"]
  for i in range(num_processes):
    cmd = [sys.executable, "-m", module, *args, "--config.distributed=True",
           f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}", f"--distributed_heartbeat_s={heartbeat_s}",
           f"--distributed_init_s={max(60, 3 * heartbeat_s)}",
           f"--distributed_shutdown_s={max(30, 3 * heartbeat_s)}"]
    penv = process_env(devices_per_process, env)
    if log_dir:
      path = os.path.join(log_dir, f"p{i}.log")
      with open(path, "wb") as out:
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=penv, stdout=out,
                                      stderr=subprocess.STDOUT))
      logs.append(path)
    else:
      p = subprocess.Popen(cmd, cwd=REPO, env=penv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
      threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] "), daemon=True).start()
      procs.append(p)
      logs.append("")
  return Pod(procs, logs, port, time.time())


def main(argv: Sequence[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(
      prog="python -m launch.local_pod", description=__doc__.split("\n\n")[0],
      usage="%(prog)s [--num_processes=N] [--devices_per_process=K] [--log_dir=D] -- "
            "<launch.main arguments>")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--heartbeat_s", type=int, default=10,
                      help="--distributed_heartbeat_s of every process")
  parser.add_argument("--log_dir", default=None,
                      help="one log per process (p<i>.log) instead of prefixed output")
  parser.add_argument("rest", nargs=argparse.REMAINDER)
  opts = parser.parse_args(argv)
  rest = opts.rest[1:] if opts.rest[:1] == ["--"] else opts.rest
  if opts.num_processes < 1 or opts.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  if not any(a.startswith("--config=") for a in rest):
    parser.error("pass the launcher's arguments after --, e.g. -- --config=configs/toy_cond.py "
                 "--workdir=/tmp/pod_run")
  pod = start(opts.num_processes, opts.devices_per_process, rest, log_dir=opts.log_dir,
              heartbeat_s=opts.heartbeat_s)
  forward = lambda sig, frame: pod.signal(sig)  # noqa: E731
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  codes = pod.wait()
  print(f"[local_pod] exit codes {describe(codes)} after {time.time() - pod.started:.1f} s",
        flush=True)
  first = next((c for c in codes if c), 0)
  return 128 - first if first < 0 else first  # killed by signal S: 128 + S, as a shell says


def describe(codes: Sequence[Optional[int]]) -> str:
  """Exit codes with the signal's name for a process a signal ended: '[-9 (SIGKILL), 69]'."""
  out = []
  for c in codes:
    if c is not None and c < 0:
      try:
        out.append(f"{c} ({signal.Signals(-c).name})")
        continue
      except ValueError:
        pass
    out.append(str(c))
  return "[" + ", ".join(out) + "]"


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
