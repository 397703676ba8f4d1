"""`nasaudit sensitivity`, `defend` and `figure cells`: thin wrappers over analysis/report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from nasaudit.errors import NasauditError
from nasaudit.options import add_device, add_profile, add_root, add_seed, add_tensorboard, device, output

logger = logging.getLogger(__name__)


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit()):
        raise NasauditError(f"--shard {text!r} must be K/N, e.g. 0/4")
    return int(k), int(n)


def _named_poison(text: str) -> tuple[str, Path]:
    """``NAME=FILE`` (the table row's name), or ``FILE`` named after the attack in its manifest."""
    from nasaudit.data.poison import read_manifest

    name, sep, file = text.partition("=")
    if sep:
        return name, Path(file)
    return read_manifest(Path(text))["attack"], Path(text)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    import pandas as pd

    from nasaudit.analysis.sensitivity import run_sensitivity
    from nasaudit.attacks import AttackContext, make_poison_file
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.npzfile import manifest_path
    from nasaudit.report.sensitivity import to_markdown
    from nasaudit.runs import job_lock

    shard = _shard(args.shard)
    out, cache = output(args.out, folder=True), output(args.cache, folder=True)
    profile = load_profile(args.profile, args.set)
    cfg, dev = profile.sensitivity, device(args.device)
    dataset = load_dataset(args.dataset or profile.experiment.datasets[0], args.root)
    if args.poison:
        poisons = dict(_named_poison(item) for item in args.poison)
    else:
        victim = None if args.victim is None else Path(args.victim)
        context = AttackContext(profile=profile, device=dev, cache_dir=cache, victim=victim)
        poisons = {}
        for attack in cfg.attacks:
            path = out / "poisons" / attack
            with job_lock(manifest_path(path)):
                poisons[attack], _ = make_poison_file(attack, dataset, cfg.budget, args.seed, context, path)
    table = run_sensitivity(
        dataset,
        poisons,
        cfg,
        seed=args.seed,
        pool_ops=profile.robot.pool_ops,
        device=dev,
        out_dir=out,
        shard=shard,
    )
    if table is None:
        done = len(list((out / "architectures").glob("arch_*.json")))
        logger.info(
            f"shard {shard[0]}/{shard[1]} done ({done} of {cfg.architectures} architectures have a file); "
            "Table 2 is written by the run that finds all of them complete"
        )
        return 0
    print(to_markdown(table))
    comparison = pd.read_csv(out / "table2_vs_paper.csv")
    ours = comparison["ours"].notna()
    logger.info(
        f"{len(table)} cells -> {out / 'table2.csv'}; against the paper: "
        f"{int(comparison.loc[ours, 'within'].sum())} of {int(ours.sum())} comparable cells within tolerance "
        f"({len(comparison)} published; {out / 'table2_vs_paper.csv'})"
    )
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import poisoned_data
    from nasaudit.defenses import DEFENSES, DefenseContext, make_defended_file, read_defended_manifest
    from nasaudit.runs import job_lock

    DEFENSES.get(args.method)
    out = Path(args.out)
    output(out.with_suffix(".npz"), folder=False)
    output(out.with_suffix(".json"), folder=False)
    profile, dev = load_profile(args.profile, args.set), device(args.device)
    cache = output(args.cache, folder=True)
    clean = load_dataset(args.dataset, args.root)
    # the poisoned indices: the defended set's manifest records what became of them
    data, provenance, poisoned = poisoned_data(clean, args.poison)
    context = DefenseContext(profile, dev, cache, source=provenance)
    with job_lock(out.with_suffix(".json")):
        path, made = make_defended_file(args.method, data, args.seed, context, out, poisoned)
    manifest = read_defended_manifest(path)
    done = "" if made else " (made before by this same run, reused)"
    kept = f"{manifest['n_kept']} of {manifest['n_input']} samples kept ({manifest['kind']})"
    logger.info(f"{args.method}: {kept}{done} -> {path}")
    outcome = manifest.get("poison_outcome")
    if outcome is not None:
        dropped, kept = outcome["poisoned_dropped"], outcome["poisoned_kept"]
        logger.info(f"  of the {outcome['poisoned']} poisoned samples: {dropped} dropped, "
                    f"{kept} kept (per class in the manifest)")  # fmt: skip
    return 0


def cmd_figure_cells(args: argparse.Namespace) -> int:
    from nasaudit.config import load_profile
    from nasaudit.models import load_architecture
    from nasaudit.report.cells_figure import figure1_architectures, save_cells_figure
    from nasaudit.spaces.darts import Genotype

    for suffix in (".png", ".pdf"):
        output(Path(args.out).with_suffix(suffix), folder=False)
    if bool(args.arch) == (args.grid is not None):
        raise NasauditError("`figure cells` needs either --arch (one or more) or --grid RESULTS, not both")
    labels = args.label or []
    if labels and len(labels) != len(args.arch or []):
        raise NasauditError(f"give one --label per --arch ({len(args.arch or [])}), or none")
    architectures = []
    if args.grid is not None:
        architectures = figure1_architectures(Path(args.grid), load_profile(args.profile, args.set))
    for i, name in enumerate(args.arch or []):
        space, arch = load_architecture(name)
        if not isinstance(arch, Genotype):
            raise NasauditError(f"{name} is a {space} architecture; `figure cells` draws DARTS-space cells")
        architectures.append((labels[i] if labels else _label(name), arch))
    paths = save_cells_figure(architectures, Path(args.out))
    logger.info(f"Figure 1 ({len(architectures)} architecture(s)) -> {', '.join(map(str, paths))}")
    return 0


def _label(name: str) -> str:
    """A column title: a reference name as is, a search's architecture.json by its job folder."""
    path = Path(name)
    if not path.is_file():
        return name
    return path.parent.name if path.stem == "architecture" else path.stem


def add_commands(sub: Any) -> None:
    """Register `sensitivity` and `defend` on the main parser's subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        add_profile(p)
        add_seed(p)
        add_device(p)
        p.add_argument(
            "--cache", default="results/cache", help="folder for surrogates and features shared by runs"
        )
        add_root(p)

    p = sub.add_parser("sensitivity", help="Table 2: change of training-free metrics under poisoning")
    p.add_argument(
        "--dataset", default=None, help="{DATASETS} (default: the profile's first experiment dataset)"
    )
    p.add_argument(
        "--poison",
        action="append",
        metavar="NAME=FILE",
        help="a poison to compare with the clean data (repeatable; default: the profile's "
        "[sensitivity] attacks, made into OUT/poisons)",
    )
    p.add_argument("--victim", default=None, help="victim model for attacks that need one (nas_gc)")
    p.add_argument("--shard", default="0/1", help="K/N: score architectures K, K+N, ... (parallel runs)")
    p.add_argument("--out", required=True, help="folder: architectures/, table2.csv/.md, table2_vs_paper.csv")
    add_tensorboard(p)  # the GC poisons it crafts record their steps
    common(p)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser(
        "defend", help="apply a defense to a (poisoned) training set; writes OUT.npz + OUT.json"
    )
    p.add_argument("method", help="defense: {DEFENSES}")
    p.add_argument("--dataset", default="digits", help="dataset: {DATASETS}")
    p.add_argument("--poison", type=Path, help="poison file the defense sees applied (default: clean data)")
    p.add_argument("--out", required=True, help="output path; writes OUT.npz and its manifest OUT.json")
    common(p)
    p.set_defaults(func=cmd_defend)


def add_figure_cells(figure_sub: Any) -> None:
    """Register `figure cells` on the `figure` group's subcommands."""
    p = figure_sub.add_parser("cells", help="Figure 1: normal and reduction cells of DARTS architectures")
    p.add_argument(
        "--arch",
        action="append",
        help="reference name, genotype JSON or a search's architecture.json (repeatable: one column each)",
    )
    p.add_argument(
        "--grid",
        default=None,
        metavar="RESULTS",
        help="instead: the paper's pair from a grid's results folder (best clean and worst RLF 50%% "
        "P-DARTS architecture on the profile's first dataset)",
    )
    add_profile(p, "profile of the grid run (with --grid)")
    p.add_argument("--label", action="append", help="column title per --arch (default: name or job folder)")
    p.add_argument("--out", required=True, help="output path without suffix; writes OUT.png and OUT.pdf")
    p.set_defaults(func=cmd_figure_cells)
