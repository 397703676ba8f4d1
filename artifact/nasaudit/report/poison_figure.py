"""Figure 2 (paper Appendix C): randomly drawn training images, clean and as each poison replaced them.

One column per drawn sample and one row per version: "Clean" first, then one row per poison file
(e.g. GC and Gaussian noise, as in the paper). The samples are drawn uniformly (seeded) from the
indices every given poison replaced, so a column always shows one image in every version. A label
poison keeps the image; its row shows the flipped label in the panel title.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from nasaudit.config import Profile
from nasaudit.data.datasets import ImageDataset
from nasaudit.data.poison import Poison
from nasaudit.errors import NasauditError
from nasaudit.io import write_bytes
from nasaudit.options import add_root, add_seed, output, positive

logger = logging.getLogger(__name__)


def drawn_indices(poisons: Sequence[Poison], n: int, seed: int) -> np.ndarray:
    """``n`` training indices (sorted) drawn uniformly from those that every poison replaced."""
    common = poisons[0].indices
    for poison in poisons[1:]:
        common = np.intersect1d(common, poison.indices)
    if not len(common):
        raise NasauditError("the poisons replace no sample in common; give poisons made with the same seed")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(common, size=min(n, len(common)), replace=False))


def poison_figure(poisons: Sequence[Poison], dataset: ImageDataset, n: int = 8, seed: int = 0) -> Figure:
    """Rows: clean, then each poison; columns: ``n`` drawn samples. Titles give the (new) class."""
    indices = drawn_indices(poisons, n, seed)
    rows = [("Clean", dataset.train.images[indices], dataset.train.labels[indices])]
    for poison in poisons:
        where = np.searchsorted(poison.indices, indices)
        images = poison.images[where] if poison.images is not None else dataset.train.images[indices]
        labels = poison.labels[where] if poison.labels is not None else dataset.train.labels[indices]
        rows.append((f"{poison.attack} (p = {poison.budget:.0%})", images, labels))
    fig = Figure(figsize=(1.25 * len(indices) + 1.2, 1.45 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(indices), squeeze=False)
    for r, (title, images, labels) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.imshow(images[c], interpolation="nearest")
            changed = r > 0 and labels[c] != dataset.train.labels[indices[c]]
            ax.set_title(dataset.classes[labels[c]], fontsize=8, color="crimson" if changed else "black")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=9)
    return fig


# Appendix C shows GC (Table 1's NAS-specific GC) and Gaussian noise; the label attacks keep the images.
FIGURE2_ATTACKS = ("nas_gc", "gaussian")


def figure2_poisons(
    results: Path, profile: Profile, data_root: Path | None = None, attacks: Sequence[str] = FIGURE2_ATTACKS
) -> tuple[list[Poison], ImageDataset]:
    """The paper's rows from a Table 1 grid: per attack, a finished poison of the grid's first dataset
    at the largest budget (P-DARTS's victim when the attack has one, as in Figure 1), and its dataset."""
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import load_poison
    from nasaudit.grid import Layout, build_grid, is_done, load_experiment

    layout, name = Layout.of(results, profile), profile.table1.datasets[0]
    tasks = build_grid(load_experiment("table1", profile), layout).by_stage().get("poison", [])
    picked = []
    for attack in attacks:
        done = [t for t in tasks if t.dataset == name and t.attack == attack and is_done(t, layout)]
        if not done:
            raise NasauditError(
                f"no finished {attack} poison of {name} under {layout.root}; run `make table1` first"
            )
        picked.append(max(done, key=lambda t: (t.budget, t.algorithm == "pdarts", -t.trial)))
    dataset = load_dataset(name, data_root).first(profile.grid.train_subset)
    return [load_poison(layout.poison(t), dataset) for t in picked], dataset


def save_poison_figure(
    poisons: Sequence[Poison], dataset: ImageDataset, out: Path, n: int = 8, seed: int = 0
) -> list[Path]:
    """Write ``OUT.png`` (200 dpi) and ``OUT.pdf`` atomically; returns their paths."""
    fig = poison_figure(poisons, dataset, n, seed)
    paths = []
    for suffix, options in ((".png", {"dpi": 200}), (".pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], **options)
        paths.append(write_bytes(Path(out).with_suffix(suffix), buf.getvalue()))
    return paths


def cmd_figure_poisons(args: argparse.Namespace) -> int:
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import load_poison, read_manifest

    for suffix in (".png", ".pdf"):
        output(Path(args.out).with_suffix(suffix), folder=False)
    names = {read_manifest(Path(p))["dataset"] for p in args.poison}
    if len(names) > 1:
        raise NasauditError(f"the poisons are for different datasets ({', '.join(sorted(names))}); give one")
    dataset = load_dataset(names.pop(), args.root)
    poisons = [load_poison(Path(p), dataset) for p in args.poison]
    paths = save_poison_figure(poisons, dataset, Path(args.out), args.n, args.seed)
    logger.info(f"Figure 2 ({len(poisons)} poison(s), {dataset.name}) -> {', '.join(map(str, paths))}")
    return 0


def add_figure_poisons(figure_sub: Any) -> None:
    """Register `figure poisons` on the `figure` group's subcommands."""
    p = figure_sub.add_parser("poisons", help="Figure 2: clean training images and their poisoned versions")
    p.add_argument("--poison", action="append", required=True, help="poison file (repeatable: one row each)")
    p.add_argument("--n", type=positive, default=8, help="samples drawn (columns)")
    add_seed(p)
    p.add_argument("--out", required=True, help="output path without suffix; writes OUT.png and OUT.pdf")
    add_root(p)
    p.set_defaults(func=cmd_figure_poisons)
