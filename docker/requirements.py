"""Print requirements.txt's pins for an environment whose PyTorch is older than the native one's.

The images (and .venv-compat) install torch and torchvision separately, at the version a build
argument names, from the CUDA wheel index. What else they install must still come from
requirements.txt, so that native and container runs use the same libraries, except where an older
torch cannot work with a pin: docker/torch-MAJOR.MINOR.txt lists those replacements for every release
of that line, each with its reason.

    python docker/requirements.py 2.0.1 > requirements-torch-2.0.1.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPLIED_SEPARATELY = {"torch", "torchvision"}


def read_pins(path: Path) -> dict[str, str]:
    """Package name (normalised) -> its `name==version` line; comments and blank lines skipped."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line)
        if match is None:
            sys.exit(f"{path}: not an exact pin `name==version`: {line!r}")
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = line
    return pins


def requirements_for(torch_version: str, root: Path = ROOT) -> list[str]:
    pins = read_pins(root / "requirements.txt")
    line = ".".join(torch_version.split(".")[:2])
    replacements_file = root / "docker" / f"torch-{line}.txt"
    replacements = read_pins(replacements_file) if replacements_file.exists() else {}
    unknown = sorted(set(replacements) - set(pins))
    if unknown:
        sys.exit(f"{replacements_file}: replaces pins requirements.txt does not have: {', '.join(unknown)}")
    return [replacements.get(name, line) for name, line in pins.items() if name not in SUPPLIED_SEPARATELY]


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not re.fullmatch(r"\d+\.\d+\.\d+", argv[0]):
        sys.exit("usage: python docker/requirements.py TORCH_VERSION   (e.g. 2.0.1)")
    print("\n".join(requirements_for(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
