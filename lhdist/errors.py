"""The one error path of the `lhdist` command: a user error is one line and exit code 2; any
other exception is one line plus the file that holds its full traceback (exit code 1).

User errors are what the user can fix: `ValueError` (a bad config, dataset or checkpoint, with
the numbers and the rule), missing or misplaced files, and the file system refusing a write
(disk full, read-only, permission). `RankFailure` is another rank's failure, already named by
the watchdog: one line, no traceback of the collective that noticed it.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1

# errno -> what the user reads; these are the machine's state, not a bug.
OS_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "already exists",
}


# Raised by our own checks with a full sentence (errno unset), or by the OS for a path.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                  PermissionError)  # fmt: skip


class RankFailure(RuntimeError):
    """This rank stops because another rank failed or vanished; the message names it."""


_traceback_dir: Path | None = None


def set_traceback_dir(path: str | os.PathLike | None) -> None:
    """Where an unexpected exception's traceback goes (the run directory, once it is known)."""
    global _traceback_dir
    _traceback_dir = Path(path) if path else None


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_os_error(error: OSError) -> str:
    """'no space left on device: /ckpt/step_00000010/model.pt' (errno's words, then the file)."""
    what = OS_ERRORS.get(error.errno or -1) or one_line(error.strerror or str(error))
    files = [str(f) for f in (error.filename, error.filename2) if f]
    return f"{what}: {' -> '.join(files)}" if files else what


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, RankFailure):
        return False
    if isinstance(error, (ValueError, *USER_OS_ERRORS)):
        return True
    return isinstance(error, OSError) and error.errno in OS_ERRORS


def describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return describe_os_error(error)
    return one_line(str(error))


def write_traceback(error: BaseException) -> Path | None:
    """The full traceback of `error` in the run directory (else the temp directory)."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    name = f"traceback-rank{os.environ.get('RANK', '0')}.txt"
    for folder in (_traceback_dir, Path(tempfile.gettempdir()) / f"lhdist-{os.getpid()}"):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return None


def quiet_library_logs() -> None:
    """c10d logs each failed store or socket call of a dying job as a warning with a C++ stack
    (dozens of lines per survivor); the watchdog names the cause in one. Read when torch loads,
    so this must run first; an explicit TORCH_CPP_LOG_LEVEL wins."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def run_command(prog: str, command: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run one sub-command and turn whatever it raises into one line on stderr and an exit code."""
    quiet_library_logs()
    try:
        return int(command(list(argv)) or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except RankFailure as e:
        print(f"{prog}: stopped: {one_line(str(e))}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except Exception as e:
        if is_user_error(e):
            print(f"{prog}: error: {describe(e)}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
        path = write_traceback(e)
        where = f" (full traceback in {path})" if path else ""
        summary = one_line(f"{type(e).__name__}: {e}")[:400]
        print(f"{prog}: internal error: {summary}{where}", file=sys.stderr, flush=True)
        return EXIT_FAILURE


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (usage stays behind --help), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {one_line(message)} (see --help)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR)
