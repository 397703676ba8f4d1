"""The `nasaudit` command line: thin wrappers that parse, validate at the boundary and call the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nasaudit.errors import NasauditError

Handler = Callable[[argparse.Namespace], None]


def _device(name: str):  # type: ignore[no-untyped-def]
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NasauditError(f"device {name!r} requested but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# --- data -----------------------------------------------------------------------------------------


def cmd_data_download(args: argparse.Namespace) -> None:
    from nasaudit.data.datasets import DATASETS, download_dataset, load_dataset

    names = DATASETS.names() if args.name == "all" else [args.name]
    for name in names:
        folder = download_dataset(name, args.root)
        ds = load_dataset(name, args.root)
        print(f"{name}: {len(ds.train)} train / {len(ds.test)} test images in {folder}")


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
    from nasaudit.attacks import AttackContext, run_attack
    from nasaudit.config import load_profile
    from nasaudit.data.datasets import load_dataset
    from nasaudit.data.poison import save_poison

    if args.attack is None or args.out is None:
        raise NasauditError("`nasaudit poison` needs --attack and --out (or a subcommand: inspect, apply)")
    dataset = load_dataset(args.dataset, args.root)
    context = AttackContext(
        profile=load_profile(args.profile),
        device=_device(args.device),
        cache_dir=Path(args.cache),
        victim=None if args.victim is None else Path(args.victim),
    )
    poison = run_attack(args.attack, dataset, args.budget, args.seed, context)
    path = save_poison(poison, Path(args.out))
    print(f"{args.attack}: {len(poison.indices)} of {poison.n_train} samples poisoned -> {path}")


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

    dataset = load_dataset(args.dataset or read_manifest(Path(args.file))["dataset"], args.root)
    poisoned = apply_poison(load_poison(Path(args.file), dataset), dataset).train
    out = write_npz(
        Path(args.out).with_suffix(".npz"), {"images": poisoned.images, "labels": poisoned.labels}
    )
    write_json(
        Path(args.out).with_suffix(".json"),
        {
            "dataset": dataset.name,
            "poison": str(args.file),
            "poison_sha256": sha256_file(Path(args.file).with_suffix(".npz")),
            "train_sha256": poisoned.sha256,
            "npz_sha256": sha256_file(out),
            "environment": environment_manifest(),
        },
    )
    print(f"poisoned training split of {dataset.name} ({len(poisoned)} samples) -> {out}")


# --- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from nasaudit import __version__

    parser = argparse.ArgumentParser(
        prog="nasaudit", description="Audit the robustness of NAS to data poisoning."
    )
    parser.add_argument("--version", action="version", version=f"nasaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def root_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root", type=Path, default=None, help="data folder (default: $NASAUDIT_DATA or ./data)"
        )

    data = sub.add_parser("data", help="download and describe datasets")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = data_sub.add_parser("download", help="fetch a dataset (checksums verified) into the data folder")
    p.add_argument("name", help="dataset name, or 'all'")
    root_arg(p)
    p.set_defaults(func=cmd_data_download)
    p = data_sub.add_parser("info", help="print a dataset's sizes, classes and hash as JSON")
    p.add_argument("name")
    root_arg(p)
    p.set_defaults(func=cmd_data_info)

    poison = sub.add_parser(
        "poison",
        help="craft a poisoned dataset file, or inspect/apply one",
        description="Craft a poison: nasaudit poison --attack A --dataset D --budget P --seed S --out FILE. "
        "Or: nasaudit poison inspect FILE / nasaudit poison apply FILE --out OUT.",
    )
    poison.add_argument("--attack", help="attack name (see `nasaudit poison --help`)")
    poison.add_argument("--dataset", default="digits")
    poison.add_argument("--budget", type=float, default=0.1, help="fraction of the training set, in (0, 1]")
    poison.add_argument("--seed", type=int, default=0)
    poison.add_argument("--profile", default="smoke", help="profile name or .toml path")
    poison.add_argument("--victim", help="victim model file (gc, nas_gc)")
    poison.add_argument("--cache", default="results/cache", help="folder for artifacts shared across poisons")
    poison.add_argument("--device", default="auto")
    poison.add_argument("--out", help="output path; writes OUT.npz and its manifest OUT.json")
    root_arg(poison)
    poison.set_defaults(func=cmd_poison_make)
    poison_sub = poison.add_subparsers(dest="action", required=False, metavar="ACTION")
    p = poison_sub.add_parser("inspect", help="validate a poison file against its dataset and summarise it")
    p.add_argument("file")
    p.add_argument("--dataset", default=None, help="dataset to check against (default: the manifest's)")
    root_arg(p)
    p.set_defaults(func=cmd_poison_inspect)
    p = poison_sub.add_parser("apply", help="write the poisoned training split as .npz (+ manifest)")
    p.add_argument("file")
    p.add_argument("--dataset", default=None, help="dataset to apply to (default: the manifest's)")
    p.add_argument("--out", required=True)
    root_arg(p)
    p.set_defaults(func=cmd_poison_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except NasauditError as exc:
        print(f"nasaudit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasaudit: interrupted; finished results are kept and a rerun resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
