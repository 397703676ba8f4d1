"""How much the commands say: ``-v``/``-q`` and the one logging setup every entry point calls.

Modules log through ``logging.getLogger(__name__)``; only entry points (the ``nasaudit`` CLI, the smoke
test, the benchmarks, a grid's worker processes and Slurm tasks) install a handler, here. At the default
(INFO) a line is the message alone, on stdout as the status lines always were; warnings and errors go
to stderr; ``-v`` adds debug lines (on stderr, so piped results stay clean) and puts time, level and
logger name before every line; ``-q`` keeps warnings and errors only, and hides progress bars.
What a command prints as its result (a table, JSON, a listing) is output, not logging: it is printed
whatever the verbosity.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

#: The loggers the entry points set the level of: the library's, the benchmarks', and the module run as
#: a script (``python -m nasaudit.smoke`` logs as ``__main__``).
LOGGERS = ("nasaudit", "benchmarks", "__main__")

_PLAIN = logging.Formatter("%(message)s")
_DETAILED = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


class _Console(logging.Handler):
    """INFO to stdout, everything else to stderr; the streams are looked up when a line is written, so
    redirected (or test-captured) streams receive it."""

    def __init__(self, detailed: bool) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(_DETAILED if detailed else _PLAIN)

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno == logging.INFO else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed stream must not end the run
            self.handleError(record)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet``; given nowhere they leave no attribute, so a
    subcommand's parser does not overwrite what the main parser read (``nasaudit -v CMD``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
        default=argparse.SUPPRESS, help="also debug lines; every line with its time and logger",
    )  # fmt: skip
    group.add_argument(
        "-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
        default=argparse.SUPPRESS, help="only warnings and errors (and the result): no status lines or bars",
    )  # fmt: skip


def level_of(args: argparse.Namespace) -> int:
    """The level ``-v``/``-q`` asked for: INFO when neither was given."""
    return getattr(args, "log_level", logging.INFO)


def level() -> int:
    """The level this process logs at: the one its child processes (a grid's workers and Slurm tasks,
    the smoke test's portability runs) are started with."""
    return logging.getLogger("nasaudit").getEffectiveLevel()


def flags(level: int) -> list[str]:
    """The option that asks a child command for ``level``: ``-v``, ``-q`` or none (the default)."""
    return ["-v"] if level < logging.INFO else ["-q"] if level > logging.INFO else []


def configure(level: int = logging.INFO) -> None:
    """Install the console handler (replacing one installed before) and set the library's level.

    The root logger keeps WARNING, so other libraries' warnings still show and their debug lines do not.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Console)]:
        root.removeHandler(handler)
    root.addHandler(_Console(detailed=level < logging.INFO))
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)
    # torch 2.0.0 (the P-DARTS image's pin) warns of TypedStorage's deprecation from inside its own
    # torch.save, again at every call (pytorch/pytorch#98777; once per process from 2.0.1): not ours to fix
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)


def quiet() -> bool:
    """Whether ``-q`` silenced the status lines: progress bars follow them. Unconfigured (the library
    used from Python) is not quiet."""
    return logging.getLogger("nasaudit").level > logging.INFO
