"""Errors the user fixes (a config, a workdir, a checkpoint): the launcher prints them as one line.

Exit codes of `python -m launch.main`: 0 done; 1 a RunError (the message says what to fix); 2 a
bad config value or key; 69 another process of a multi-process run went away (restart them all);
75 stop_after_s reached and 143 SIGTERM (state saved: run the same
command again). Any other exception is a bug and keeps its traceback.

`exit_with(e)` is how a launcher ends on a RunError: the one `error:` line, then the exit code.
"""
import errno
import os
import sys
import time


class RunError(Exception):
  """Something about the run's inputs or workdir that the user has to fix; nothing was lost."""

  exit_code = 1

  def exit(self):
    """Ends the process with exit_code (after the error line is written)."""
    sys.exit(self.exit_code)


def exit_with(e: RunError, stream=None):
  """Writes `error: <e>` (one line) to stderr and ends the process with e's exit code."""
  stream = stream or sys.stderr
  stream.write(f"error: {' '.join(str(e).split())}\n")
  stream.flush()
  e.exit()


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
  the failed save's last background writes may still have left (`exit()` calls it)."""

  cleanup = staticmethod(lambda: None)

  @classmethod
  def with_cleanup(cls, cleanup, message: str) -> "DiskFullError":
    e = cls(message)
    e.cleanup = cleanup
    return e

  def exit(self):
    """Skips the interpreter's teardown, where the failed save's writer threads would print a
    traceback each on their closed event loops (the error line already written is the last
    line); removes what their last writes left, then exits with exit_code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    time.sleep(1.0)
    self.cleanup()
    os._exit(self.exit_code)  # pylint: disable=protected-access


class WorkdirLocked(RunError):
  """Another live run holds the workdir."""


class MissingPath(RunError, FileNotFoundError):
  """A path the run reads (a teacher, data, weights file, checkpoint) does not exist."""


class UnreadableCheckpoint(RunError, ValueError):
  """A checkpoint (e.g. a teacher's parameters) exists but does not read."""


class TeacherMismatch(RunError, ValueError):
  """The teacher checkpoint was trained for another bridge, data setup or network."""


class PeerLost(RunError):
  """Another process of a multi-process run went away (killed, its host died or was preempted);
  restart every process: the run resumes from its last complete checkpoint."""

  exit_code = 69  # EX_UNAVAILABLE
