"""Victim models of gradient canceling: one self-describing file that rebuilds the network it holds.

GC and NAS-specific GC differentiate through a trained network: P-DARTS's converged supernet (whose α
they target) or the best clean final architecture of TE-NAS, RoBoT or NSGANetV2 (whose weights and
biases they target). A victim file stores, next to the state dict, the *kind* of network and a JSON
spec from which that kind rebuilds it, plus the dataset and class count it was trained for, so an
attack can load any victim without knowing which search produced it, and a victim trained on other
classes is refused at the boundary rather than poisoning with the wrong gradients.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasaudit.data.datasets import ImageDataset
from nasaudit.errors import NasauditError
from nasaudit.io import jsonable, save_torch
from nasaudit.registry import Registry

FORMAT = "nasaudit-victim/1"
_KEYS = {"format", "kind", "spec", "dataset", "num_classes", "state_dict"}

VictimBuilder = Callable[[dict[str, Any], int], nn.Module]
"""``(spec, num_classes) -> module`` with freshly initialised weights, shaped like the saved one."""

VICTIMS: Registry[VictimBuilder] = Registry("victim kind")


@VICTIMS.register("darts_supernet")
def _darts_supernet(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """P-DARTS's last-stage supernet: SuperNet(**kwargs), then each edge shrunk to its saved candidates."""
    from nasaudit.spaces.darts import CELL_TYPES, SuperNet

    net = SuperNet(**{**spec["kwargs"], "num_classes": num_classes})
    for cell_type in CELL_TYPES:
        for edge, names in enumerate(spec[f"candidates_{cell_type}"]):
            net.keep_ops(cell_type, edge, names)
    return net


@VICTIMS.register("darts_network")
def _darts_network(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """A final DARTS-space architecture as retrained: the evaluation network of its genotype."""
    from nasaudit.spaces.darts import EvalNetwork, Genotype

    genotype = Genotype.from_json(spec["genotype"])
    return EvalNetwork(genotype, spec["channels"], spec["layers"], num_classes, spec["auxiliary"])


@VICTIMS.register("resnet18_cifar")
def _resnet18_cifar(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """The CIFAR ResNet-18 of the model registry (its size does not depend on the profile)."""
    from nasaudit.models import MODELS

    return MODELS.get("resnet18_cifar")(None, num_classes, None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Victim:
    """A loaded victim: the rebuilt network (on the CPU, eval mode) and what its file says about it."""

    path: Path
    kind: str
    spec: dict[str, Any]
    dataset: str
    num_classes: int
    model: nn.Module


def supernet_spec(kwargs: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """The ``darts_supernet`` spec of a SuperNet built with ``kwargs``, at its current candidate sets."""
    from nasaudit.spaces.darts import CELL_TYPES

    spec: dict[str, Any] = {"kwargs": jsonable(kwargs)}
    for cell_type in CELL_TYPES:
        spec[f"candidates_{cell_type}"] = net.candidates(cell_type)  # type: ignore[operator]
    return spec


def save_victim(
    path: Path, model: nn.Module, *, kind: str, spec: dict[str, Any], dataset: str, num_classes: int
) -> Path:
    """Write a victim file atomically, after checking that ``kind`` rebuilds ``model`` from ``spec``.

    The check (rebuild, strict state-dict load) runs at save time so that a spec which cannot rebuild
    its network fails in the job that wrote it, not in every attack that later reads it.
    """
    try:
        spec = json.loads(json.dumps(spec))
    except TypeError as exc:
        raise NasauditError(
            f"victim spec for {path} is not JSON-serialisable ({exc}); pass plain data"
        ) from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _rebuild(kind, spec, num_classes, state, f"victim for {path}")
    record = {
        "format": FORMAT,
        "kind": kind,
        "spec": spec,
        "dataset": dataset,
        "num_classes": int(num_classes),
        "state_dict": state,
    }
    return save_torch(Path(path), record)


def read_victim(path: Path, dataset: ImageDataset) -> Victim:
    """Load a victim file for attacking ``dataset``, with one-line errors for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise NasauditError(
            f"victim file {path} does not exist; make one with `nasaudit victim --train JOB... --out FILE` "
            "or take a P-DARTS search's supernet_victim.pt"
        )
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasauditError(f"{path} is not a readable victim file ({first}); re-create it") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not set(record) >= _KEYS:
        raise NasauditError(f"{path} is not a {FORMAT} victim file; re-create it with `nasaudit victim`")
    if record["dataset"] != dataset.name or record["num_classes"] != dataset.num_classes:
        raise NasauditError(
            f"victim {path} was trained on {record['dataset']!r} ({record['num_classes']} classes), "
            f"so it does not match the dataset's classes ({dataset.name!r}, {dataset.num_classes} classes); "
            f"use a victim trained on {dataset.name!r}"
        )
    model = _rebuild(record["kind"], record["spec"], record["num_classes"], record["state_dict"], str(path))
    return Victim(path, record["kind"], record["spec"], record["dataset"], record["num_classes"], model)


def load_victim(path: Path, dataset: ImageDataset) -> nn.Module:
    """The victim network in ``path``, rebuilt and loaded, checked against ``dataset``."""
    return read_victim(path, dataset).model


def _rebuild(
    kind: str, spec: dict[str, Any], num_classes: int, state: dict[str, torch.Tensor], where: str
) -> nn.Module:
    if kind not in VICTIMS:
        raise NasauditError(
            f"{where}: unknown victim kind {kind!r}; choose one of: {', '.join(VICTIMS.names())}"
        )
    try:
        model = VICTIMS.get(kind)(spec, num_classes)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, NasauditError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NasauditError(
            f"{where}: its spec does not rebuild the saved {kind} network ({first}); re-create the victim"
        ) from None
    return model.eval()


def victim_from_train_job(job_dir: Path, channels: int, layers: int, out: Path | None = None) -> Path:
    """Turn a finished ``nasaudit train`` job (result.json + model.pt) into a ``darts_network`` victim.

    The job's result records the genotype it retrained (``description.architecture``) and the dataset;
    ``channels`` and ``layers`` are the evaluation network's size it was trained at (the profile's
    ``darts_net``), checked by loading the weights. Writes ``out`` (default ``job_dir/victim.pt``).
    """
    job_dir = Path(job_dir)
    result_file, weights = job_dir / "result.json", job_dir / "model.pt"
    if not result_file.is_file() or not weights.is_file():
        raise NasauditError(
            f"{job_dir} is not a finished training job (needs result.json and model.pt); run `nasaudit train`"
        )
    try:
        result = json.loads(result_file.read_text())
        genotype = result["description"]["architecture"]
        space = result["description"].get("space", "darts")
        dataset = result["dataset"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise NasauditError(
            f"{result_file} does not record the trained architecture (description.architecture) and "
            "dataset; retrain it with `nasaudit train`"
        ) from None
    if space != "darts":
        raise NasauditError(
            f"{job_dir} trained a {space!r} architecture; victim files hold DARTS-space networks"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        num_classes = int(state["classifier.weight"].shape[0])
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise NasauditError(
            f"{weights} is not a DARTS network's state dict ({exc}); retrain the job"
        ) from None
    auxiliary = any(k.startswith("auxiliary_head.") for k in state)
    spec = {"genotype": genotype, "channels": channels, "layers": layers, "auxiliary": auxiliary}
    model = _rebuild(
        "darts_network", spec, num_classes, state, f"{job_dir} (channels={channels}, layers={layers})"
    )
    out = job_dir / "victim.pt" if out is None else Path(out)
    return save_victim(out, model, kind="darts_network", spec=spec, dataset=dataset, num_classes=num_classes)


def best_train_job(job_dirs: Iterable[Path]) -> Path:
    """The job with the highest test accuracy (paper §4: the best clean architecture across trials)."""
    jobs, accuracies = [Path(j) for j in job_dirs], []
    for job in jobs:
        try:
            accuracies.append(float(json.loads((job / "result.json").read_text())["test_accuracy"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise NasauditError(
                f"{job} has no readable result.json; finish it with `nasaudit train`"
            ) from None
    if not jobs:
        raise NasauditError("no training jobs given; pass the clean trials' job folders")
    return jobs[max(range(len(jobs)), key=lambda i: (accuracies[i], -i))]  # ties: the first given
