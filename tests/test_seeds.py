"""The one seed derivation: independent streams per key, the same on every machine, used everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from nasaudit.data.device import epoch_generator
from nasaudit.seeds import derive_seed, rng

SOURCE = Path(__file__).resolve().parents[1] / "artifact" / "nasaudit"


def test_a_seed_depends_on_every_part_and_on_nothing_else() -> None:
    seeds = {derive_seed(0, "epoch", e) for e in range(1000)} | {
        derive_seed(1, "epoch", e) for e in range(1000)
    }
    assert len(seeds) == 2000 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(0, "epoch", 1) == derive_seed(np.int64(0), "epoch", np.int32(1))  # NumPy ints alike
    assert derive_seed(0, "epoch", 1) != derive_seed(0, "epoch", "1") != derive_seed(0, "epoch1")
    assert derive_seed(0, "pdarts", "split") != derive_seed(0, "tenas", "split")  # components never share


def test_seeds_are_integers_hashed_the_same_on_every_machine() -> None:
    # SHA-256 and SeedSequence are integer arithmetic: these values hold on any CPU, NumPy and Python
    assert derive_seed(0, "epoch", 1) == 1782707090
    assert derive_seed("poison", "cifar10", "gc", 0) == 721090589
    assert rng(7, "x").integers(0, 1000, 3).tolist() == [591, 747, 444]


def test_large_seeds_fit_torch_and_the_epoch_generators_follow_the_derivation() -> None:
    """The preflight found NSGANetV2's per-candidate seeds (job seed × 100,003, then × 1,000,003 per
    epoch) overflowing torch's seed range; derived seeds are 31-bit whatever the parts."""
    huge = (2**31 - 1) * 100_003 + 7
    a, b = epoch_generator(huge, 3, torch.device("cpu")), epoch_generator(huge, 3, torch.device("cpu"))
    assert torch.equal(torch.randperm(10, generator=a), torch.randperm(10, generator=b))
    assert epoch_generator(5, 1, torch.device("cpu")).initial_seed() == derive_seed(5, "epoch", 1)


def test_no_module_derives_a_seed_another_way() -> None:
    """Arithmetic on seeds, hand-built seed lists and SeedSequences belong to nasaudit.seeds alone."""
    ways = re.compile(r"seed \* \d|default_rng\(\[|SeedSequence\(|hashlib\.\w+\(.*seed")
    found = [
        f"{path.relative_to(SOURCE)}:{n}: {line.strip()}"
        for path in SOURCE.rglob("*.py")
        if path.name != "seeds.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ways.search(line)
    ]
    assert not found, found
