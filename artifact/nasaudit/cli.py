"""The `nasaudit` command line: thin wrappers that parse, validate at the boundary and call the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from nasaudit.errors import NasauditError
from nasaudit.options import (
    Parser,
    add_device,
    add_profile,
    add_root,
    add_seed,
    add_tensorboard,
    device,
    output,
    positive,
    random_space,
)

Handler = Callable[[argparse.Namespace], None]

logger = logging.getLogger(__name__)


def _print_json(obj: object) -> None:
    """A command's result: printed whatever the verbosity (the status lines around it are logged)."""
    print(json.dumps(obj, indent=2, sort_keys=True))


# --- data -----------------------------------------------------------------------------------------


def cmd_data_download(args: argparse.Namespace) -> None:
    from nasaudit.data.datasets import DATASETS, download_dataset, load_dataset

    names = DATASETS.names() if args.name == "all" else [args.name]
    for name in names:
        folder = download_dataset(name, args.root)
        ds = load_dataset(name, args.root)
        logger.info(f"{name}: {len(ds.train)} train / {len(ds.test)} test images in {folder}")


def cmd_data_info(args: argparse.Namespace) -> None:
    from nasaudit.data.datasets import DATASETS, load_dataset

    ds = load_dataset(args.name, args.root)
    counts = [int(c) for c in (ds.train.labels[:, None] == range(ds.num_classes)).sum(0)]
    _print_json(
        {
            "name": ds.name,
            "description": DATASETS.get(ds.name).description,
            "train": len(ds.train),
            "test": len(ds.test),
            "image_shape": list(ds.train.images.shape[1:]),
            "num_classes": ds.num_classes,
            "classes": list(ds.classes),
            "train_class_counts": counts,
            "mean": ds.mean,
            "std": ds.std,
            "train_sha256": ds.train.sha256,
        }
    )


# --- poison -----------------------------------------------------------------------------------------


def cmd_poison_make(args: argparse.Namespace) -> None:
    from nasaudit.attacks import ATTACKS, AttackContext, make_poison_file
    from nasaudit.attacks.base import check_budget
    from nasaudit.attacks.victim import check_victim_path
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import read_manifest
    from nasaudit.npzfile import manifest_path
    from nasaudit.runs import job_lock

    if args.attack is None or args.out is None:
        raise NasauditError("`nasaudit poison` needs --attack and --out (or a subcommand: inspect, apply)")
    ATTACKS.get(args.attack)
    out = Path(args.out)
    output(out.with_suffix(".npz"), folder=False)
    output(manifest_path(out), folder=False)
    context = AttackContext(
        profile=load_profile(args.profile, args.set),
        device=device(args.device),
        cache_dir=output(args.cache, folder=True),
        victim=None if args.victim is None else check_victim_path(Path(args.victim)),
    )
    dataset = load_dataset(args.dataset, args.root)
    check_budget(args.budget, len(dataset.train))
    with job_lock(manifest_path(out)):
        path, made = make_poison_file(args.attack, dataset, args.budget, args.seed, context, out)
    manifest = read_manifest(path)
    done = "poisoned" if made else "poisoned (made before by this same run, reused)"
    logger.info(f"{args.attack}: {manifest['n_poisoned']} of {manifest['n_train']} samples {done} -> {path}")


def cmd_poison_inspect(args: argparse.Namespace) -> None:
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import load_poison, read_manifest

    manifest = read_manifest(Path(args.file))
    dataset = load_dataset(args.dataset or manifest["dataset"], args.root)
    poison = load_poison(Path(args.file), dataset)
    changed = (
        int((poison.labels != dataset.train.labels[poison.indices]).sum())
        if poison.labels is not None
        else int((poison.images != dataset.train.images[poison.indices]).any(axis=(1, 2, 3)).sum())
    )
    report = {k: v for k, v in manifest.items() if k != "environment"}
    report.update({"n_poisoned": len(poison.indices), "samples_changed": changed, "valid": True})
    if poison.images is not None:
        diff = poison.images.astype(int) - dataset.train.images[poison.indices].astype(int)
        report["linf_255"] = int(abs(diff).max()) if len(diff) else 0
    _print_json(report)


def cmd_poison_apply(args: argparse.Namespace) -> None:
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import apply_poison, load_poison, read_manifest
    from nasaudit.io import environment_manifest, sha256_file, write_json, write_npz

    out = Path(args.out)
    output(out.with_suffix(".npz"), folder=False)
    output(out.with_suffix(".json"), folder=False)
    dataset = load_dataset(args.dataset or read_manifest(Path(args.file))["dataset"], args.root)
    poisoned = apply_poison(load_poison(Path(args.file), dataset), dataset).train
    npz = write_npz(out.with_suffix(".npz"), {"images": poisoned.images, "labels": poisoned.labels})
    write_json(
        out.with_suffix(".json"),
        {
            "dataset": dataset.name,
            "poison": str(args.file),
            "poison_sha256": sha256_file(Path(args.file).with_suffix(".npz")),
            "train_sha256": poisoned.sha256,
            "npz_sha256": sha256_file(npz),
            "environment": environment_manifest(),
        },
    )
    logger.info(f"poisoned training split of {dataset.name} ({len(poisoned)} samples) -> {npz}")


# --- architectures, search, training ------------------------------------------------------------------


def cmd_arch_info(args: argparse.Namespace) -> None:
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import DATASETS
    from nasaudit.models import load_architecture
    from nasaudit.spaces.darts import arch_info

    DATASETS.get(args.dataset)
    net = load_profile(args.profile, args.set).darts_net
    _, genotype = load_architecture(args.arch)
    num_classes = 100 if args.dataset == "cifar100" else 10  # every other registered dataset has 10
    _print_json(arch_info(genotype, args.channels or net.channels, args.layers or net.layers, num_classes))


def cmd_search(args: argparse.Namespace) -> None:
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.nas import NAS, SearchContext, run_search
    from nasaudit.nas.base import ARCHITECTURE, search_data
    from nasaudit.runs import job_lock

    NAS.get(args.algo)
    out = output(args.out, folder=True)
    profile = load_profile(args.profile, args.set)  # checked before any data is read
    where = device(args.device)
    clean = load_dataset(args.dataset, args.root)
    data, provenance = search_data(clean, args.poison, args.defense)
    context = SearchContext(profile, where, out, clean=clean)
    with job_lock(out / ARCHITECTURE):
        record = run_search(args.algo, data, args.seed, context, provenance)
    logger.info(f"{args.algo}: architecture -> {out / ARCHITECTURE}")
    _print_json(record["architecture"])


def cmd_train(args: argparse.Namespace) -> None:
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.models import load_architecture, retrain_file
    from nasaudit.runs import job_lock
    from nasaudit.train import RESULT, reported_accuracy

    out = output(args.out, folder=True)
    profile, dev = load_profile(args.profile, args.set), device(args.device)
    load_architecture(args.arch)  # a bad architecture is one line before the dataset is read
    dataset = load_dataset(args.dataset, args.root)
    with job_lock(out / RESULT):
        result = retrain_file(args.arch, dataset, profile, seed=args.seed, device=dev, out_dir=out)
    final, best = (reported_accuracy(result, which) for which in ("final", "best"))
    logger.info(
        f"test accuracy {final:.2f}% final, {best:.2f}% best epoch ({result['params']} parameters) "
        f"-> {out / RESULT}"
    )


def cmd_random_baseline(args: argparse.Namespace) -> None:
    import numpy as np

    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.io import write_json
    from nasaudit.models import ARCHITECTURES, retrain
    from nasaudit.nas import NAS, SearchContext, random_samplers
    from nasaudit.nas.random_sampling import check_random_baseline
    from nasaudit.runs import job_lock
    from nasaudit.train import RESULT, reported_accuracy

    out = output(args.out, folder=True)
    profile, dev = load_profile(args.profile, args.set), device(args.device)
    n = args.n if args.n is not None else profile.random_baseline.n
    sampler = NAS.get(random_samplers()[args.space])
    if sampler.space == "darts":
        check_random_baseline(profile.random_baseline, n)
    dataset = load_dataset(args.dataset, args.root)
    accuracies = []
    for i in range(n):
        job, seed = out / f"arch_{i:03d}", args.seed + i
        with job_lock(job / RESULT):
            arch = sampler(dataset, seed, SearchContext(profile, dev, job, trial=i))
            genotype = ARCHITECTURES.get(args.space)(arch, job)
            result = retrain(args.space, genotype, dataset, profile, seed=seed, device=dev, out_dir=job,
                             source=f"random sample {i}")  # fmt: skip
        accuracies.append(reported_accuracy(result, profile.results.accuracy))
        logger.info(f"arch {i}: {accuracies[-1]:.2f}% ({profile.results.accuracy} epoch)")
    summary = {
        "space": args.space,
        "dataset": dataset.name,
        "n": n,
        "accuracies": accuracies,
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies, ddof=1)) if n > 1 else 0.0,
        "accuracy": profile.results.accuracy,
        "profile": profile.name,
        "seed": args.seed,
    }
    write_json(out / "summary.json", summary)
    logger.info(f"random baseline on {dataset.name}: {summary['mean']:.2f} ± {summary['std']:.2f} % (n={n})")


def cmd_victim(args: argparse.Namespace) -> None:
    from nasaudit.attacks.victim import make_victim_file
    from nasaudit.config import load_profile
    from nasaudit.runs import job_lock

    out = output(args.out, folder=False)
    profile = load_profile(args.profile, args.set)
    net = profile.darts_net
    channels, layers = args.channels or net.channels, args.layers or net.layers
    with job_lock(out):
        path, job = make_victim_file(
            [Path(j) for j in args.train], channels, layers, out, profile.results.accuracy
        )
    made = (
        f"the most accurate of {len(args.train)} job(s), {job}"
        if job
        else "made before by this same run, reused"
    )
    logger.info(f"victim: {made} -> {path}")


# --- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from nasaudit import __version__

    parser = Parser(prog="nasaudit", description="Audit the robustness of NAS to data poisoning.")
    parser.add_argument("--version", action="version", version=f"nasaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="download and describe datasets")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = data_sub.add_parser("download", help="fetch a dataset (checksums verified) into the data folder")
    p.add_argument("name", help="dataset name ({DATASETS}), or 'all'")
    add_root(p)
    p.set_defaults(func=cmd_data_download)
    p = data_sub.add_parser("info", help="print a dataset's sizes, classes and hash as JSON")
    p.add_argument("name", help="dataset name: {DATASETS}")
    add_root(p)
    p.set_defaults(func=cmd_data_info)

    poison = sub.add_parser(
        "poison",
        help="craft a poisoned dataset file, or inspect/apply one",
        description="Craft a poison: nasaudit poison --attack A --dataset D --budget P --seed S --out FILE. "
        "Or: nasaudit poison inspect FILE / nasaudit poison apply FILE --out OUT.",
    )
    poison.add_argument("--attack", help="attack: {ATTACKS}")
    poison.add_argument("--dataset", default="digits", help="dataset: {DATASETS}")
    poison.add_argument(
        "--budget", type=float, default=0.1, help="fraction of the training set poisoned, in (0, 1]"
    )
    add_seed(poison)
    add_profile(poison)
    poison.add_argument("--victim", help="victim model file (gc, nas_gc; from `nasaudit victim`)")
    poison.add_argument("--cache", default="results/cache", help="folder for artifacts shared across poisons")
    add_device(poison)
    add_tensorboard(poison)
    poison.add_argument("--out", help="output path; writes OUT.npz and its manifest OUT.json")
    add_root(poison)
    poison.set_defaults(func=cmd_poison_make)
    poison_sub = poison.add_subparsers(dest="action", required=False, metavar="ACTION")
    p = poison_sub.add_parser("inspect", help="validate a poison file against its dataset and summarise it")
    p.add_argument("file", help="poison file (NAME.npz or NAME.json)")
    p.add_argument("--dataset", default=None, help="dataset to check against (default: the manifest's)")
    add_root(p)
    p.set_defaults(func=cmd_poison_inspect)
    p = poison_sub.add_parser("apply", help="write the poisoned training split as .npz (+ manifest)")
    p.add_argument("file", help="poison file (NAME.npz or NAME.json)")
    p.add_argument("--dataset", default=None, help="dataset to apply to (default: the manifest's)")
    p.add_argument("--out", required=True, help="output path; writes OUT.npz and its manifest OUT.json")
    add_root(p)
    p.set_defaults(func=cmd_poison_apply)

    def job_args(p: argparse.ArgumentParser, out_help: str) -> None:
        p.add_argument("--dataset", default="digits", help="dataset: {DATASETS}")
        add_profile(p)
        add_seed(p)
        add_device(p)
        add_tensorboard(p)
        p.add_argument("--out", required=True, help=out_help)
        add_root(p)

    arch = sub.add_parser("arch", help="describe architectures")
    arch_sub = arch.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = arch_sub.add_parser("info", help="genotype, parameter count (no auxiliary head) and FLOPs as JSON")
    p.add_argument("--arch", required=True, help="reference name ({GENOTYPES}) or JSON file")
    p.add_argument("--dataset", default="cifar10", help="sets the class count: {DATASETS}")
    p.add_argument(
        "--channels", type=positive, default=None, help="initial channels (default: the profile's)"
    )
    p.add_argument("--layers", type=positive, default=None, help="cells (default: the profile's)")
    add_profile(p, "network size ([darts_net])")
    p.set_defaults(func=cmd_arch_info)

    p = sub.add_parser("search", help="run a NAS algorithm on (poisoned) data; writes OUT/architecture.json")
    p.add_argument("--algo", required=True, help="NAS algorithm: {NAS}")
    p.add_argument("--poison", type=Path, help="poison file to apply to the training set before searching")
    p.add_argument("--defense", type=Path, help="defended dataset (`nasaudit defend`) to apply after it")
    job_args(p, "job folder (resumable state, logs, architecture.json)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "train", help="retrain an architecture from scratch on clean data; writes OUT/result.json"
    )
    p.add_argument(
        "--arch",
        required=True,
        help="reference name ({GENOTYPES}), genotype JSON or a search's architecture.json",
    )
    job_args(p, "job folder (checkpoint, result.json, model.pt)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("random-baseline", help="retrain the space's random architectures (ΔImp. reference)")
    p.add_argument("--space", default="darts", type=random_space, help="search space: {RANDOM_SPACES}")
    p.add_argument(
        "--n", type=positive, default=None, help="architectures (default: the profile's random_baseline.n)"
    )
    job_args(p, "folder with one job per architecture and summary.json")
    p.set_defaults(func=cmd_random_baseline)

    from nasaudit.grid.commands import add_commands as add_grid_commands
    from nasaudit.report.commands import add_commands as add_report_commands

    add_grid_commands(sub)
    add_report_commands(sub)

    from nasaudit.analysis.commands import add_commands as add_analysis_commands
    from nasaudit.analysis.commands import add_figure_cells

    add_analysis_commands(sub)
    from nasaudit.preflight.run import add_commands as add_preflight_commands

    add_preflight_commands(sub)
    figure = sub.add_parser("figure", help="the paper's figures as PNG and PDF")
    figure_sub = figure.add_subparsers(dest="action", required=True, metavar="FIGURE")
    add_figure_cells(figure_sub)
    from nasaudit.report.poison_figure import add_figure_poisons

    add_figure_poisons(figure_sub)

    p = sub.add_parser("victim", help="make a GC victim file from the most accurate of some training jobs")
    p.add_argument("--train", nargs="+", required=True, help="`nasaudit train` job folders")
    p.add_argument(
        "--channels", type=positive, default=None, help="initial channels (default: the profile's)"
    )
    p.add_argument("--layers", type=positive, default=None, help="their cells (default: the profile's)")
    add_profile(p, "the profile the jobs were trained with")
    p.add_argument("--out", required=True, help="victim file (for `nasaudit poison --victim`)")
    p.set_defaults(func=cmd_victim)
    from nasaudit.threads import add_argument as add_threads_argument

    add_threads_argument(parser)
    return parser


def _log_on_terminal(line: str) -> None:
    """The thread choice is shown on a terminal only (debug elsewhere): piped stdout stays data."""
    logger.log(logging.INFO if sys.stdout.isatty() else logging.DEBUG, line)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2: a one-line error on stderr, nothing written).

    Errors are written to stderr directly, not logged: one line whatever ``-q``/``-v`` say.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error already printed (2)
        return exc.code if isinstance(exc.code, int) else 0
    except NasauditError as exc:  # a plugin (NASAUDIT_PLUGINS) that --help's registry lists cannot import
        print(f"nasaudit: error: {exc}", file=sys.stderr)
        return 2
    from nasaudit import verbosity

    verbosity.configure(verbosity.level_of(args))
    try:
        from nasaudit.threads import configure

        if getattr(args, "tensorboard", None) is not None:
            from nasaudit import metrics_log

            metrics_log.enable(args.tensorboard)
        configure(requested=args.threads, log=_log_on_terminal)
        status = args.func(args)  # a handler may return a non-zero exit status (a failed comparison)
    except NasauditError as exc:
        logger.debug("where the error was raised", exc_info=True)
        print(f"nasaudit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasaudit: interrupted; finished results are kept and a rerun resumes", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
