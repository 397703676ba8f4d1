"""Victim models of gradient canceling: one self-describing file that rebuilds the network it holds.

GC and NAS-specific GC differentiate through a trained network: P-DARTS's converged supernet (whose α
they target) or the best clean final architecture of TE-NAS, RoBoT or NSGANetV2 (whose weights and
biases they target). A victim file stores, next to the state dict, the *kind* of network and a JSON
spec from which that kind rebuilds it, plus the dataset and class count it was trained for, so an
attack can load any victim without knowing which search produced it, and a victim trained on other
classes is refused at the boundary rather than poisoning with the wrong gradients.

The file belongs to the attacks that read it (``gc``, ``nas_gc``); `nasaudit victim`, P-DARTS (its
supernet) and the grid's victim stage write it.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nasaudit.data.datasets import ImageDataset
from nasaudit.errors import NasauditError
from nasaudit.io import check_types, jsonable, load_torch, save_torch, sha256_file
from nasaudit.registry import Registry
from nasaudit.runs import IDENTITY, check_record, fingerprint

if TYPE_CHECKING:
    from nasaudit.spaces.mbv3 import ChannelPlan, MBV3Arch

FORMAT = "nasaudit-victim/1"
_TYPES = {"kind": str, "spec": dict, "dataset": str, "num_classes": int, "state_dict": dict}
_KEYS = {"format", *_TYPES}
#: The JSON types of each kind's spec fields (``kwargs`` of a supernet: its own), checked before a
#: network is built from them: a float width or a string depth is refused, never coerced.
_SPEC_TYPES: dict[str, dict[str, type]] = {
    "darts_supernet": {"kwargs": dict, "candidates_normal": list, "candidates_reduce": list},
    "darts_network": {"genotype": dict, "channels": int, "layers": int, "auxiliary": bool},
    "resnet18_cifar": {},
    "mbv3_network": {"architecture": dict, "widths": dict},
}
_KWARGS_TYPES = {"C": int, "layers": int}

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


@VICTIMS.register("mbv3_network")
def _mbv3_network(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """A final MobileNetV3-space architecture as retrained (NSGANetV2's): its standalone network.

    The network upscales 32×32 inputs to the architecture's resolution inside ``forward`` (bicubic,
    after normalisation), exactly as in training, so GC differentiates the forward that was trained.
    Dropout and drop-connect are left out of the spec: a victim runs in eval mode, where both are the
    identity and hold no weights.
    """
    from nasaudit.spaces.mbv3 import MBV3Arch, MBV3Net

    return MBV3Net(MBV3Arch.from_json(spec["architecture"]), _mbv3_plan(spec["widths"]), num_classes)


def _mbv3_plan(widths: dict[str, Any]) -> ChannelPlan:
    """The channel plan of explicit widths, on OFA's fixed strides, activations and SE placement."""
    from nasaudit.spaces.mbv3 import OFA_MBV3, ChannelPlan, StageSpec

    stages = tuple(
        StageSpec(int(w), s.stride, s.act, s.se)
        for w, s in zip(widths["stages"], OFA_MBV3.stages, strict=True)
    )
    return ChannelPlan(
        int(widths["stem"]),
        int(widths["first_block"]),
        stages,
        int(widths["final_expand"]),
        int(widths["feature_mix"]),
    )


def mbv3_spec(arch: MBV3Arch, plan: ChannelPlan) -> dict[str, Any]:
    """The ``mbv3_network`` spec of ``MBV3Net(arch, plan, ...)``.

    It records the widths themselves rather than ``[mbv3] width_mult``: a train job's weights show the
    widths, while several multipliers round to the same ones, so widths are what can be known exactly.
    """
    widths = {
        "stem": plan.stem,
        "first_block": plan.first_block,
        "stages": [s.width for s in plan.stages],
        "final_expand": plan.final_expand,
        "feature_mix": plan.feature_mix,
    }
    return {"architecture": dataclasses.replace(arch, weights=None).to_json(), "widths": widths}


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
    path: Path,
    model: nn.Module,
    *,
    kind: str,
    spec: dict[str, Any],
    dataset: str,
    num_classes: int,
    identity: dict[str, Any] | None = None,
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
        IDENTITY: json.dumps(identity, sort_keys=True),
    }
    return save_torch(Path(path), record)


def check_victim_path(path: Path) -> Path:
    """``path`` if it is a file; else one line saying how to make one (checked before any work starts)."""
    path = Path(path)
    if not path.is_file():
        raise NasauditError(
            f"victim file {path} does not exist; make one with `nasaudit victim --train JOB... --out FILE` "
            "or take a P-DARTS search's supernet_victim.pt"
        )
    return path


def read_victim(path: Path, dataset: ImageDataset) -> Victim:
    """Load a victim file for attacking ``dataset``, with one-line errors for every way it can be wrong."""
    path = check_victim_path(path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasauditError(f"{path} is not a readable victim file ({first}); re-create it") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not set(record) >= _KEYS:
        raise NasauditError(f"{path} is not a {FORMAT} victim file; re-create it with `nasaudit victim`")
    wrong = check_types(record, _TYPES)
    if wrong or record["num_classes"] < 1:
        raise NasauditError(
            f"{path}: {wrong or 'num_classes must be ≥ 1'}; re-create it with `nasaudit victim`"
        )
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
    wrong = check_types(spec, _SPEC_TYPES.get(kind, {}))
    if not wrong and kind == "darts_supernet":
        wrong = check_types(spec["kwargs"], _KWARGS_TYPES)
    sizes = [v for k, v in {**spec, **spec.get("kwargs", {})}.items() if k in ("C", "channels", "layers")]
    if wrong or any(isinstance(v, int) and v < 1 for v in sizes):
        raise NasauditError(
            f"{where}: its {kind} spec is invalid ({wrong or 'sizes must be ≥ 1'}); re-create the victim"
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


@dataclass(frozen=True)
class JobVictim:
    """How a finished train job of one search space becomes a victim file."""

    kind: str
    classifier: str  # state-dict key of the final linear layer's weight, one row per class
    #: (recorded architecture, trained state dict, DARTS channels, DARTS layers) → (spec, what sized it)
    spec: Callable[[Any, dict[str, torch.Tensor], int, int], tuple[dict[str, Any], str]]


JOB_VICTIMS: Registry[JobVictim] = Registry("train-job space")


def _darts_job(genotype: Any, state: dict[str, torch.Tensor], channels: int, layers: int) -> tuple[dict, str]:
    auxiliary = any(k.startswith("auxiliary_head.") for k in state)
    spec = {"genotype": genotype, "channels": channels, "layers": layers, "auxiliary": auxiliary}
    return spec, f"channels={channels}, layers={layers}"


def _mbv3_job(
    architecture: Any, state: dict[str, torch.Tensor], channels: int, layers: int
) -> tuple[dict, str]:
    """Widths are the output rows of the stem, the first block, each stage's first layer and the head."""
    from nasaudit.spaces.mbv3 import MBV3Arch

    arch = MBV3Arch.from_json(architecture)
    firsts = [1 + sum(arch.depths[:s]) for s in range(len(arch.depths))]

    def rows(key: str) -> int:
        return int(state[key].shape[0])

    widths = {
        "stem": rows("stem.conv.weight"),
        "first_block": rows("blocks.0.project.conv.weight"),
        "stages": [rows(f"blocks.{i}.project.conv.weight") for i in firsts],
        "final_expand": rows("head.final_expand.conv.weight"),
        "feature_mix": rows("head.feature_mix.conv.weight"),
    }
    return mbv3_spec(arch, _mbv3_plan(widths)), "widths read from model.pt"


JOB_VICTIMS.register("darts")(JobVictim("darts_network", "classifier.weight", _darts_job))
JOB_VICTIMS.register("mbv3")(JobVictim("mbv3_network", "head.classifier.weight", _mbv3_job))


def victim_from_train_job(
    job_dir: Path, channels: int, layers: int, out: Path | None = None, identity: dict[str, Any] | None = None
) -> Path:
    """Turn a finished ``nasaudit train`` job (result.json + model.pt) into a victim of its space.

    The job's result records the architecture it retrained (``description.architecture``), its space
    and the dataset. A DARTS network is rebuilt at ``channels`` and ``layers`` (the profile's
    ``darts_net``, checked by loading the weights); a MobileNetV3 network's widths are read from its
    weights, so the two sizes do not apply to it. Writes ``out`` (default ``job_dir/victim.pt``).
    """
    job_dir = Path(job_dir)
    result_file, weights = job_dir / "result.json", job_dir / "model.pt"
    if not result_file.is_file() or not weights.is_file():
        raise NasauditError(
            f"{job_dir} is not a finished training job (needs result.json and model.pt); run `nasaudit train`"
        )
    try:
        result = json.loads(result_file.read_text())
        architecture = result["description"]["architecture"]
        space = result["description"].get("space", "darts")
        dataset = result["dataset"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise NasauditError(
            f"{result_file} does not record the trained architecture (description.architecture) and "
            "dataset; retrain it with `nasaudit train`"
        ) from None
    job = JOB_VICTIMS.get(space)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        num_classes = int(state[job.classifier].shape[0])
        spec, size = job.spec(architecture, state, channels, layers)
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, IndexError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:  # fmt: skip
        raise NasauditError(
            f"{weights} is not a {space} network's state dict ({exc}); retrain the job"
        ) from None
    model = _rebuild(job.kind, spec, num_classes, state, f"{job_dir} ({size})")
    out = job_dir / "victim.pt" if out is None else Path(out)
    return save_victim(
        out, model, kind=job.kind, spec=spec, dataset=dataset, num_classes=num_classes, identity=identity
    )


def victim_identity(job_dirs: Iterable[Path], channels: int, layers: int, accuracy: str) -> dict[str, Any]:
    """What a victim made from training jobs depends on: their results (by hash), which accuracy
    picks the most accurate, and the DARTS size."""
    results = [Path(j) / "result.json" for j in job_dirs]
    return fingerprint(
        "victim",
        train_results=[sha256_file(r) if r.is_file() else None for r in results],
        accuracy=accuracy,
        channels=channels,
        layers=layers,
    )


def make_victim_file(
    job_dirs: list[Path], channels: int, layers: int, out: Path, accuracy: str
) -> tuple[Path, Path | None]:
    """The victim ``out`` of the most accurate of ``job_dirs``: reused when this run made it, else made.

    Returns the file and the job it was made from (None when reused).
    """
    identity = victim_identity(job_dirs, channels, layers, accuracy)
    if Path(out).is_file():
        record = load_torch(out, "makes the victim again")
        check_record(out, record, identity)
        return Path(out), None
    job = best_train_job(job_dirs, accuracy)
    return victim_from_train_job(job, channels, layers, out, identity), job


def best_train_job(job_dirs: Iterable[Path], accuracy: str) -> Path:
    """The job with the highest test accuracy (paper §4: the best clean architecture across trials),
    ``accuracy`` saying which one a job reports ("best" epoch or "final")."""
    from nasaudit.train import reported_accuracy

    jobs, accuracies = [Path(j) for j in job_dirs], []
    for job in jobs:
        try:
            accuracies.append(reported_accuracy(json.loads((job / "result.json").read_text()), accuracy))
        except (OSError, ValueError, KeyError, TypeError):
            raise NasauditError(
                f"{job} has no readable result.json; finish it with `nasaudit train`"
            ) from None
    if not jobs:
        raise NasauditError("no training jobs given; pass the clean trials' job folders")
    return jobs[max(range(len(jobs)), key=lambda i: (accuracies[i], -i))]  # ties: the first given
