"""`nasaudit table` and `nasaudit compare`: a grid's results as the paper's table, and its verdict."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from nasaudit.options import add_profile, output

logger = logging.getLogger(__name__)


def cmd_table(args: argparse.Namespace) -> int:
    from nasaudit.report.tables import from_published, to_markdown, write_table

    output(args.out, folder=True)
    if args.from_published:
        table = from_published(args.name)
        logger.info(f"{args.name}: significance recomputed from the published means and stds alone")
    else:
        from nasaudit.config import load_profile
        from nasaudit.grid import Layout, load_experiment
        from nasaudit.preflight.synthetic import refuse_synthetic
        from nasaudit.report.experiment import describe_baselines, experiment_table

        profile = load_profile(args.profile, args.set)
        layout = Layout.of(args.results, profile)
        refuse_synthetic(layout.root, "results folder")
        result = experiment_table(
            load_experiment(args.name, profile),
            layout,
            published_baselines=args.published_baselines,
            allow_partial=args.allow_partial,
        )
        table = result.table
        logger.info(describe_baselines(result.baselines))
        if result.missing:
            missing = len(result.missing)
            logger.warning(f"PARTIAL: {missing} jobs have no result yet: their cells have fewer trials")
    paths = write_table(args.name, table, Path(args.out))
    print(to_markdown(table))
    logger.info(
        f"{len(table)} cells, {int(table['significant'].sum())} significant -> {', '.join(map(str, paths))}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from nasaudit.preflight.synthetic import refuse_synthetic
    from nasaudit.report.compare import agrees, compare, tolerance_for
    from nasaudit.report.published import PUBLISHED_DIR, TOLERANCES, read_csv

    expected_path = Path(args.expected) if args.expected else PUBLISHED_DIR / f"{args.name}.csv"
    refuse_synthetic(Path(args.ours), "table")
    refuse_synthetic(expected_path, "expected table")
    tolerances = Path(args.tolerances) if args.tolerances else expected_path.parent / "tolerances.toml"
    if not tolerances.is_file():
        tolerances = TOLERANCES
    expected, ours = read_csv(expected_path), read_csv(Path(args.ours))
    result = compare(expected, ours, tolerance_for(args.name, expected, tolerances))
    print(tabulate(result, headers="keys", tablefmt="github", showindex=False, floatfmt=".2f"))
    within = int(result["within"].sum())
    verdict = f"{args.name}: {within} of {len(result)} cells within tolerance ({tolerances.name})"
    if "significance_agrees" in result.columns:
        verdict += f", {int(result['significance_agrees'].sum())} of {len(result)} significance marks agree"
    ok = agrees(result)
    print(f"{verdict}: {'OK' if ok else 'FAILED'} (expected: {expected_path})")
    return 0 if ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from nasaudit.config import load_profile
    from nasaudit.grid import Layout
    from nasaudit.preflight.synthetic import refuse_synthetic
    from nasaudit.report.html import write_report

    profile = load_profile(args.profile, args.set)
    refuse_synthetic(Layout.of(args.results, profile).root, "results folder")
    path = write_report(
        profile,
        Path(args.results),
        out=None if args.out is None else Path(args.out),
        table2=None if args.table2 is None else Path(args.table2),
        data_root=args.root,
    )
    logger.info(f"report of profile {profile.name!r} (open it in a browser; it needs no network) -> {path}")
    return 0


def add_commands(sub: Any) -> None:
    """Register `table`, `compare` and `report` on the main parser's subcommands."""
    p = sub.add_parser("table", help="a table from the grid's results (or the paper's): NAME.csv/.md/.tex")
    p.add_argument("name", help="a grid experiment: {EXPERIMENTS}")
    add_profile(p, "profile of the grid run")
    p.add_argument("--results", default="results", help="results folder the grid wrote to")
    p.add_argument("--out", required=True, help="folder for NAME.csv, NAME.md and NAME.tex")
    p.add_argument(
        "--from-published",
        action="store_true",
        help="recompute the significance marks from the paper's printed means and stds alone",
    )
    p.add_argument(
        "--published-baselines",
        action="store_true",
        help="measure ΔImp. against the paper's random baselines instead of our random-sampling jobs",
    )
    p.add_argument(
        "--allow-partial", action="store_true", help="write the table although some jobs are missing"
    )
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "compare", help="our table against the expected one, cell by cell; exit 1 if it differs"
    )
    p.add_argument("name", help="table name (its section in the tolerances file)")
    p.add_argument("--ours", required=True, help="our NAME.csv (from `nasaudit table`)")
    p.add_argument(
        "--expected", default=None, help="expected CSV (default: the paper's, expected_results/published)"
    )
    p.add_argument(
        "--tolerances",
        default=None,
        help="tolerances TOML (default: tolerances.toml beside the expected CSV, else the paper's)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "report", help="one self-contained HTML page: every table against the paper, plots, provenance"
    )
    add_profile(p, "the profile whose results to show")
    p.add_argument("--results", default="results", help="results folder the grids wrote to (RESULTS/PROFILE)")
    p.add_argument("--out", default=None, help="folder for index.html (default: RESULTS/PROFILE/report)")
    p.add_argument(
        "--table2", default=None, help="`nasaudit sensitivity`'s folder (default: RESULTS/PROFILE/table2)"
    )
    p.add_argument(
        "--root", type=Path, default=None, help="data folder for Figure 2 (default: $NASAUDIT_DATA or ./data)"
    )
    p.set_defaults(func=cmd_report)
