"""Figure 1 (paper §5.1): the normal and reduction cells of DARTS-space architectures, side by side.

Each cell in DARTS's notation: the two cell inputs c_{k-2} and c_{k-1} on the left, the four
intermediate nodes 0..3 (squares) in the middle, the cell output c_{k} (the concatenation of the
nodes in ``concat``) on the right, and one arrow per genotype edge labelled with its operation.
Matplotlib only, so no system package (graphviz) is needed. Every edge label carries the artist id
``"{cell}:{node}:{input}"`` so tests and scripts can read back what was drawn.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.io import write_bytes
from nasaudit.spaces.darts import NODES, Genotype

INPUT_NAMES = (r"$c_{k-2}$", r"$c_{k-1}$")
OUTPUT_NAME = r"$c_{k}$"
CELLS = (("normal", "normal cell"), ("reduce", "reduction cell"))
Point = tuple[float, float]
_COLOURS = {"input": "#cfe8cf", "node": "#cfe0f5", "output": "#f6e7b0"}


def _positions() -> dict[int, Point]:
    """Layout: state index → (x, y). States 0, 1 are the inputs, 2..5 the nodes, 6 the output.

    The nodes sit on one line between the inputs (above and below on the left) and the output, so
    the edges from c_{k-2} fan out above the line and those from c_{k-1} below it.
    """
    pos = {0: (0.0, 1.7), 1: (0.0, -1.7)}
    pos.update({node + 2: (1.9 + 1.7 * node, 0.0) for node in range(NODES)})
    pos[NODES + 2] = (1.9 + 1.7 * NODES, 0.0)
    return pos


def _curve_point(start: Point, end: Point, rad: float, t: float) -> Point:
    """The point at parameter ``t`` of matplotlib's ``arc3`` curve (a quadratic Bézier)."""
    (x1, y1), (x2, y2) = start, end
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
    a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t**2
    return a * x1 + b * cx + c * x2, a * y1 + b * cy + c * y2


def _edge_shape(source: int, target: int) -> tuple[float, float]:
    """(arc3 curvature, label position along the curve) of an edge between two states.

    Edges from an input are straight, labelled near their node so the labels of one fan do not
    collide; an edge that skips over nodes on the line bends above it.
    """
    if source < 2:
        return 0.0, 0.68
    return (0.0 if target - source == 1 else -0.45), 0.5


def draw_cell(
    ax: Axes, pairs: Sequence[tuple[str, int]], concat: Sequence[int], cell: str, title: str
) -> None:
    """Draw one cell (8 ``(op, input)`` pairs, 2 per node) onto ``ax``."""
    pos = _positions()
    output = NODES + 2
    names = {0: INPUT_NAMES[0], 1: INPUT_NAMES[1], output: OUTPUT_NAME}
    names.update({node + 2: str(node) for node in range(NODES)})
    for state, (x, y) in pos.items():
        kind = "input" if state < 2 else "output" if state == output else "node"
        box = "square,pad=0.45" if kind == "node" else "round,pad=0.35"
        ax.text(
            x,
            y,
            names[state],
            ha="center",
            va="center",
            fontsize=11,
            zorder=3,
            bbox={"boxstyle": box, "facecolor": _COLOURS[kind], "edgecolor": "#444444"},
        )
    for state in concat:  # into the output: below the line, behind the labelled edges
        _arrow(ax, pos[state], pos[output], 0.0 if state == output - 1 else 0.3, colour="#aaaaaa")
    for k, (op, inp) in enumerate(pairs):
        target = k // 2 + 2
        rad, t = _edge_shape(inp, target)
        repeated = k % 2 == 1 and pairs[k - 1][1] == inp  # a node reading one input twice (random genotypes)
        if repeated:
            rad, t = rad + 0.3, 0.5  # the second edge bends away from the first, its label mid-curve
        _arrow(ax, pos[inp], pos[target], rad)
        x, y = _curve_point(pos[inp], pos[target], rad, t)
        label_box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9}
        ax.text(
            x,
            y,
            op,
            ha="center",
            va="center",
            fontsize=7,
            zorder=4,
            gid=f"{cell}:{k // 2}:{inp}" + (":again" if repeated else ""),
            bbox=label_box,
        )
    ax.set_title(title, fontsize=11)
    ax.set_xlim(-0.7, pos[output][0] + 0.7)
    ax.set_ylim(-2.3, 2.3)
    ax.set_axis_off()


def _arrow(ax: Axes, start: Point, end: Point, rad: float, colour: str = "#333333") -> None:
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        zorder=2,
        arrowprops={
            "arrowstyle": "-|>",
            "color": colour,
            "lw": 1.0,
            "shrinkA": 13,
            "shrinkB": 13,
            "connectionstyle": f"arc3,rad={rad}",
        },
    )


def cells_figure(architectures: Sequence[tuple[str, Genotype]]) -> Figure:
    """One column per (label, genotype): its normal cell above its reduction cell."""
    if not architectures:
        raise NasauditError("figure cells needs at least one architecture (--arch)")
    fig = Figure(figsize=(7.5 * len(architectures), 6.4), layout="constrained")
    axes = fig.subplots(2, len(architectures), squeeze=False)
    for column, (label, genotype) in enumerate(architectures):
        for row, (cell, cell_title) in enumerate(CELLS):
            pairs, concat = genotype.cell(reduction=cell == "reduce")
            draw_cell(axes[row][column], pairs, concat, cell, f"{label}: {cell_title}")
    return fig


def figure1_architectures(
    results: Path, profile: Profile, *, algorithm: str = "pdarts", attack: str = "rlf", budget: float = 0.5
) -> list[tuple[str, Genotype]]:
    """The paper's pair from a grid's results: the best clean and the worst poisoned final architecture.

    Among the finished trials (retrained, with ``result.json``) of ``algorithm`` on the profile's first
    dataset, the clean search with the highest test accuracy and the ``attack`` search at ``budget``
    with the lowest (paper Figure 1: P-DARTS, RLF at p = 50%).
    """
    from nasaudit.grid.jobs import CLEAN, JobKey, Layout
    from nasaudit.train import reported_accuracy

    layout, dataset = Layout.of(results, profile), profile.experiment.datasets[0]
    picked = []
    for name, best, condition in (("clean", max, (CLEAN, 0.0)), (attack, min, (attack, budget))):
        finished = []
        for trial in range(profile.experiment.trials):
            key = JobKey(dataset, algorithm, condition[0], condition[1], trial)
            result = layout.train_dir(key) / "result.json"
            if result.is_file():
                accuracy = reported_accuracy(json.loads(result.read_text()), profile.results.accuracy)
                finished.append((accuracy, trial, layout.search_dir(key) / "architecture.json"))
        if not finished:
            raise NasauditError(
                f"no finished {algorithm} {name} job under {layout.root / dataset / algorithm}; run the grid "
                "first, or pass architectures with --arch"
            )
        accuracy, trial, path = best(finished)
        genotype = Genotype.from_json(json.loads(path.read_text())["architecture"])
        which = "best" if best is max else "worst"
        condition_label = "clean" if name == "clean" else f"{name.upper()} p = {budget:.0%}"
        picked.append((f"{condition_label} ({which} of {len(finished)}, {accuracy:.2f}%)", genotype))
    return picked


def save_cells_figure(architectures: Sequence[tuple[str, Genotype]], out: Path) -> list[Path]:
    """Write ``OUT.png`` (200 dpi) and ``OUT.pdf`` atomically; returns their paths."""
    fig = cells_figure(architectures)
    paths = []
    for suffix, options in ((".png", {"dpi": 200}), (".pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], **options)
        paths.append(write_bytes(Path(out).with_suffix(suffix), buf.getvalue()))
    return paths
