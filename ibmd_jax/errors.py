"""Errors the user fixes (a config, a workdir, a checkpoint): the launcher prints them as one line.

Exit codes of `python -m launch.main`: 0 done; 1 a RunError (the message says what to fix); 2 a
bad config value or key; 69 another process of a multi-process run went away (restart them all);
75 stop_after_s reached and 143 SIGTERM (state saved: run the same
command again). Any other exception is a bug and keeps its traceback.
"""
import errno


class RunError(Exception):
  """Something about the run's inputs or workdir that the user has to fix; nothing was lost."""

  exit_code = 1


class ConfigError(RunError, ValueError):
  """A config value that cannot work (named with its --config.<key>)."""

  exit_code = 2


class CheckpointMismatch(RunError):
  """The workdir's checkpoints were written by a run whose state differs from this config's."""


class NoRestorableCheckpoint(RunError):
  """Checkpoints exist but none restores; starting over needs checkpoint.start_over=True."""


class NonFiniteError(RunError, FloatingPointError):
  """A step produced a non-finite (or diverging) state; nothing from it was saved."""


class DivergenceError(NonFiniteError):
  """A loss or gradient norm far past its running median: the config (e.g. its learning rate) is
  the cause, not the state it started from."""


# errno values of a write that did not fit (no space, quota, file size limit)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(RunError, OSError):
  """A save did not fit on its disk; the previous checkpoint is intact. `cleanup()` removes what
  the failed save's last background writes may still have left (the launcher calls it on exit)."""

  cleanup = staticmethod(lambda: None)

  @classmethod
  def with_cleanup(cls, cleanup, message: str) -> "DiskFullError":
    e = cls(message)
    e.cleanup = cleanup
    return e


class WorkdirLocked(RunError):
  """Another live run holds the workdir."""


class TeacherMismatch(RunError, ValueError):
  """The teacher checkpoint was trained for another bridge, data setup or network."""


class PeerLost(RunError):
  """Another process of a multi-process run went away (killed, its host died or was preempted);
  restart every process: the run resumes from its last complete checkpoint."""

  exit_code = 69  # EX_UNAVAILABLE
