"""The options the commands share, parsed and checked before any work starts.

Every command takes ``-v``/``-q`` (``verbosity``), ``--profile`` with one default (``DEFAULT_PROFILE``)
and its ``--set`` overrides, seeds in one range, devices checked against the machine, outputs checked
for writability, and prints ``--help`` with every default and the registered names an option accepts.
A usage error is one line on stderr, like every other error of the CLI, not argparse's usage block.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from nasaudit import verbosity
from nasaudit.errors import NasauditError

if TYPE_CHECKING:
    import torch

#: The profile a command uses when none is given: the paper's sizes, as ``make`` targets use by default.
#: ``--profile smoke`` (``make smoke-test``) is the CPU-sized pipeline.
DEFAULT_PROFILE = "paper"

MAX_SEED = 2**31 - 1  # seeds are mixed into 31- and 63-bit derived seeds; larger ones are refused

#: ``{NAME}`` in a help text lists that registry's names (or those the named function returns), imported
#: only when help is printed.
_REGISTRIES = {
    "ATTACKS": ("nasaudit.attacks", "ATTACKS"),
    "NAS": ("nasaudit.nas", "NAS"),
    "DEFENSES": ("nasaudit.defenses", "DEFENSES"),
    "DATASETS": ("nasaudit.data.datasets", "DATASETS"),
    "EXPERIMENTS": ("nasaudit.grid.jobs", "EXPERIMENTS"),
    "RUNNERS": ("nasaudit.grid.runners", "RUNNERS"),
    "GENOTYPES": ("nasaudit.spaces.darts.genotype", "GENOTYPES"),
    "RANDOM_SPACES": ("nasaudit.options", "random_spaces"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help (unless the text states it) and fills in ``{NAME}``
    with a registry's names, so ``--help`` says what can be given and what happens when it is not."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = re.sub(r"\{([A-Z_]+)\}", lambda m: _names(m.group(1)), action.help or "")
        default = action.default
        if (
            action.option_strings
            and default is not None
            and default is not argparse.SUPPRESS
            and not isinstance(default, bool)
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


def _names(registry: str) -> str:
    module, attribute = _REGISTRIES[registry]
    names = getattr(importlib.import_module(module), attribute)
    return ", ".join(names() if callable(names) else names.names())


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (problem, where to read more), with
    ``-v``/``-q`` on every command and subcommand (subcommands' parsers are made by this class too)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        verbosity.add_arguments(self)

    def error(self, message: str) -> NoReturn:
        print(f"nasaudit: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def seed(text: str) -> int:
    """An argparse type: a seed in 0..MAX_SEED."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {value} is outside 0..{MAX_SEED}")
    return value


def random_spaces() -> list[str]:
    """The search spaces with a registered random sampler (``NasAlgorithm.is_random_baseline``)."""
    from nasaudit.nas import random_samplers

    return sorted(random_samplers())


def random_space(text: str) -> str:
    """An argparse type: a search space that `nasaudit random-baseline` can sample."""
    spaces = random_spaces()
    if text not in spaces:
        raise argparse.ArgumentTypeError(
            f"search space {text!r} has no random sampler; choose one of: {', '.join(spaces)}"
        )
    return text


def positive(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_profile(
    p: argparse.ArgumentParser, what: str = "sizes and hyperparameters", default: str = DEFAULT_PROFILE
) -> None:
    """``--profile`` and its ``--set`` overrides (``config.load_profile(args.profile, args.set)``)."""
    p.add_argument(
        "--profile", default=default, help=f"{what}: a profile name (smoke, paper) or a .toml path"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="change one profile value (a TOML value, or a bare string), e.g. --set train.epochs=10; "
        "repeatable; checked like the file's values before any work starts",
    )


def add_tensorboard(p: argparse.ArgumentParser) -> None:
    """``--tensorboard DIR`` on the commands that train, search or optimise a poison (``metrics_log``)."""
    p.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="also write each job's per-epoch metrics as TensorBoard scalars under DIR/<job folder> "
        '(needs: pip install -e ".[tensorboard]")',
    )


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed, default=0, help=f"random seed, 0..{MAX_SEED}")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=None, help="data folder (default: $NASAUDIT_DATA or ./data)")


def device(name: str) -> torch.device:
    """The torch device ``name`` names, refused with one line when this machine does not have it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hint = "use --device auto, cpu, cuda or cuda:N"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise NasauditError(f"device {name!r} is not a device name; {hint}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NasauditError(f"device {name!r} requested but no CUDA GPU is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NasauditError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type != "cpu":
        raise NasauditError(f"device {name!r} is not supported; {hint}")
    return dev


def output(path: str | Path, folder: bool) -> Path:
    """``path`` as an output location, refused now (not after an epoch) if it cannot be written."""
    from nasaudit.io import check_output

    return check_output(Path(path), folder)
