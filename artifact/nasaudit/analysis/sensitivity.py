"""Table 2 (paper §5.2): how far the training-free metrics move when the data they read are poisoned.

Every configured metric is computed for N random architectures on fixed training samples of the clean
data and on the same indices of each poisoned dataset; Table 2 reports, per metric and attack, the
mean and std over architectures of 100·(poisoned − clean)/|clean| (``proxies.relative_change``). Same
architecture, same weights, same indices: only the data differ.

The network and samples that score a metric are those of the NAS algorithm using it (as run: RoBoT's
darts_space/get_metrics.py, TE-NAS's sample_metrics.py); each algorithm is a registered ``MetricGroup``:

- ``tenas`` (κ_NTK, R): TE-NAS's scoring supernet (C = 1, one normal and one reduction cell, all 7
  ops on every edge, mean mixing) re-instantiated with a fresh default init for every architecture
  sample; it has no genotype of its own. κ_NTK reads the first ``tenas_samples`` fixed images in
  batches of ``tenas_batch_size`` and is averaged over the batches. R uses the stem-less variant fed
  TE-NAS's inputs, a random 3×3 crop of one random channel of each of those images (drawn once per
  architecture, so clean and poisoned images are cropped alike), counted over all of them in batches
  of ``tenas_batch_size``. Neither reads labels.
- ``robot`` (grad_norm, snip, grasp, fisher, synflow, jacob_cov): the C = 16, 5-cell DARTS evaluation
  network of a genotype from RoBoT's pool sampler, default init; all ``samples`` fixed un-augmented
  images in batches of ``batch_size``, each metric averaged over the batches.

One job per architecture writes ``OUT/architectures/arch_NNN.json`` atomically with the raw values
of every data version, each tagged with a digest of the samples it read: jobs split across processes
(``shard``) and resume, and adding a poison or a metric later computes only what is missing. A group
that ignores labels scores each distinct set of images once (RLF and CLF keep the clean images).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from nasaudit.config import SensitivityConfig
from nasaudit.data.datasets import IMAGE_SHAPE, ImageDataset, Split
from nasaudit.data.device import DeviceData
from nasaudit.data.poison import apply_poison, load_poison
from nasaudit.errors import NasauditError
from nasaudit.io import environment_manifest, read_json, sha256_arrays, write_json
from nasaudit.nas.robot_pool import architecture_seed, proxy_network, sample_pool, score_networks
from nasaudit.progress import bar
from nasaudit.proxies import PROXIES
from nasaudit.proxies.linear_regions import linear_regions
from nasaudit.registry import Registry
from nasaudit.report.sensitivity import CLEAN, summarise, write_outputs
from nasaudit.runs import check_record, job_lock
from nasaudit.seeds import rng as seeded_rng
from nasaudit.spaces.darts import EDGE_OPS, Genotype, SuperNet

FORMAT = "nasaudit-sensitivity/1"
_ON_DELETE = "scores that architecture again"
CROP = 3  # TE-NAS's linear-region inputs are 3×3 crops of one channel


@dataclass(frozen=True)
class Probe:
    """One data version's fixed samples: normalised images and labels on the device, and digests."""

    images: Tensor
    labels: Tensor
    digest: str  # of the uint8 images and the labels
    image_digest: str  # of the uint8 images alone


class MetricGroup(Protocol):
    """The metrics one NAS algorithm uses, with the network and samples that algorithm scores them on."""

    algorithm: str
    metrics: tuple[str, ...]
    uses_labels: bool

    def prepare(
        self,
        genotype: Genotype,
        init_seed: int,
        num_classes: int,
        cfg: SensitivityConfig,
        device: torch.device,
    ) -> Any:
        """The architecture sample's networks (and any random choices), shared by all data versions."""
        ...

    def score(
        self, state: Any, probe: Probe, metrics: Sequence[str], cfg: SensitivityConfig
    ) -> dict[str, float]:
        """The requested metrics of ``state`` on one data version."""
        ...


GROUPS: Registry[MetricGroup] = Registry("metric group")


def tenas_supernet(num_classes: int, *, stem: bool) -> SuperNet:
    """TE-NAS's scoring supernet (prune_tenas.py); ``stem=False``: linear-region variant (1-channel input)."""
    return SuperNet(
        1,
        2,
        num_classes,
        primitives=EDGE_OPS,
        reduction_cells=(1,),
        mixing="mean",
        affine=True,
        pool_bn=False,
        stem=stem,
        stem_multiplier=1,
        final_bn_relu=True,
    )


@dataclass(frozen=True)
class TenasState:
    ntk_net: nn.Module
    region_net: nn.Module
    crops: np.ndarray  # (n, 3): channel, top, left of each sample's 3×3 crop


class TenasGroup:
    algorithm = "tenas"
    metrics = ("ntk_cond", "linear_regions")
    uses_labels = False

    def prepare(
        self,
        genotype: Genotype,
        init_seed: int,
        num_classes: int,
        cfg: SensitivityConfig,
        device: torch.device,
    ) -> TenasState:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            ntk_net = tenas_supernet(num_classes, stem=True).to(device)
            region_net = tenas_supernet(num_classes, stem=False).to(device)
        rng = seeded_rng(init_seed, "sensitivity", "tenas_inputs")
        n = cfg.tenas_samples
        positions = IMAGE_SHAPE[0] - CROP + 1
        crops = np.stack(
            [rng.integers(0, 3, n), rng.integers(0, positions, n), rng.integers(0, positions, n)]
        )
        return TenasState(ntk_net, region_net, crops.T)

    def score(
        self, state: TenasState, probe: Probe, metrics: Sequence[str], cfg: SensitivityConfig
    ) -> dict[str, float]:
        images = probe.images[: cfg.tenas_samples]
        compute = {"ntk_cond": self._ntk, "linear_regions": self._regions}
        return {m: compute[m](state, images, cfg.tenas_batch_size) for m in metrics}

    @staticmethod
    def _ntk(state: TenasState, images: Tensor, batch_size: int) -> float:
        """κ_NTK of each batch, averaged over the batches."""
        kappas = [PROXIES.get("ntk_cond")(state.ntk_net, batch, None) for batch in images.split(batch_size)]
        return float(np.mean(kappas))

    @staticmethod
    def _regions(state: TenasState, images: Tensor, batch_size: int) -> float:
        """Distinct ReLU patterns over all the samples' crops, fed in batches."""
        return linear_regions(state.region_net, _crops(images, state.crops), None, batch_size=batch_size)


def _crops(images: Tensor, crops: np.ndarray) -> Tensor:
    """N×1×3×3: for sample i, the 3×3 window at (top, left) of channel ``channel``."""
    index = torch.from_numpy(crops).to(images.device)
    offsets = torch.arange(CROP, device=images.device)
    rows = (index[:, 1, None] + offsets)[:, :, None]
    cols = (index[:, 2, None] + offsets)[:, None, :]
    samples = torch.arange(len(images), device=images.device)[:, None, None]
    return images[samples, index[:, 0, None, None], rows, cols][:, None]


class RobotGroup:
    algorithm = "robot"
    metrics = ("grad_norm", "snip", "grasp", "fisher", "synflow", "jacob_cov")
    uses_labels = True

    def prepare(
        self,
        genotype: Genotype,
        init_seed: int,
        num_classes: int,
        cfg: SensitivityConfig,
        device: torch.device,
    ) -> nn.Module:
        return proxy_network(genotype, cfg.channels, cfg.layers, num_classes, init_seed).to(device)

    def score(
        self, state: nn.Module, probe: Probe, metrics: Sequence[str], cfg: SensitivityConfig
    ) -> dict[str, float]:
        batches = zip(probe.images.split(cfg.batch_size), probe.labels.split(cfg.batch_size), strict=True)
        values = np.concatenate([score_networks([state], x, y, list(metrics)) for x, y in batches])
        return {m: float(v) for m, v in zip(metrics, values.mean(axis=0), strict=True)}


GROUPS.register("tenas")(TenasGroup())
GROUPS.register("robot")(RobotGroup())


def metric_groups(metrics: Sequence[str]) -> dict[str, list[str]]:
    """The requested metrics by the group that scores them; a metric no group scores is an error."""
    owner = {m: name for name in GROUPS for m in GROUPS.get(name).metrics}
    unknown = [m for m in metrics if m not in owner]
    if unknown:
        raise NasauditError(
            f"[sensitivity] metric {unknown[0]!r} is not scored by any group; choose from: {', '.join(owner)}"
        )
    groups: dict[str, list[str]] = {}
    for m in metrics:
        groups.setdefault(owner[m], []).append(m)
    return groups


def metric_algorithms(metrics: Sequence[str]) -> dict[str, str]:
    """Each metric's NAS algorithm (Table 2 groups its columns by it)."""
    return {m: GROUPS.get(g).algorithm for g, ms in metric_groups(metrics).items() for m in ms}


def fixed_indices(n_train: int, cfg: SensitivityConfig, seed: int) -> np.ndarray:
    """``samples`` distinct training indices in random order (the first ``tenas_samples`` serve TE-NAS)."""
    if not 0 < cfg.tenas_samples <= cfg.samples <= n_train:
        raise NasauditError(
            f"[sensitivity] needs 0 < tenas_samples ({cfg.tenas_samples}) <= samples ({cfg.samples}) <= "
            f"the training set ({n_train})"
        )
    return seeded_rng(seed, "sensitivity", "samples").permutation(n_train)[: cfg.samples].astype(np.int64)


def make_probe(data: ImageDataset, indices: np.ndarray, device: torch.device) -> Probe:
    """``data``'s samples at ``indices``, un-augmented, normalised with the clean data's statistics."""
    split = Split(data.train.images[indices], data.train.labels[indices])
    on_device = DeviceData(split, data, device)
    return Probe(
        images=on_device.transform(on_device.images),
        labels=on_device.labels,
        digest=sha256_arrays(split.images, split.labels),
        image_digest=sha256_arrays(split.images),
    )


def _job_key(
    data: ImageDataset, indices: np.ndarray, cfg: SensitivityConfig, seed: int, index: int, genotype: Genotype
) -> dict[str, Any]:
    """What one architecture's values depend on besides the data versions and the metric list."""
    sizes = ("samples", "batch_size", "channels", "layers", "tenas_samples", "tenas_batch_size")
    return {
        "format": FORMAT,
        "dataset": data.name,
        "train_sha256": data.train.sha256,
        "indices_sha256": sha256_arrays(indices),
        "seed": seed,
        "index": index,
        "genotype": genotype.to_json(),
        "sizes": {k: getattr(cfg, k) for k in sizes},
    }


def _read_record(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    if not path.is_file():
        return {"key": key, "values": {}, "digests": {}, "wall_time": 0.0}
    record = read_json(path, _ON_DELETE)
    check_record(path, record, key, key="key")
    return record


def architecture_job(
    index: int,
    genotype: Genotype,
    probes: Mapping[str, Probe],
    metrics: Sequence[str],
    cfg: SensitivityConfig,
    key: dict[str, Any],
    *,
    num_classes: int,
    init_seed: int,
    device: torch.device,
    path: Path,
) -> dict[str, Any]:
    """One architecture's raw metric values on every data version; computes only what ``path`` lacks."""
    record = _read_record(path, key)
    values, digests = record["values"], record["digests"]
    groups = metric_groups(metrics)
    memo: dict[tuple[str, str], dict[str, float]] = {}
    for name, probe in probes.items():
        if digests.get(name) == {"samples": probe.digest, "images": probe.image_digest}:
            for group_name in groups:
                memo.setdefault(_memo_key(group_name, probe), {}).update(
                    {m: v for m, v in values[name].items() if m in GROUPS.get(group_name).metrics}
                )
        else:
            values.pop(name, None)
    states: dict[str, Any] = {}
    start = time.perf_counter()
    changed = False
    for name, probe in probes.items():
        current = values.setdefault(name, {})
        for group_name, wanted in groups.items():
            missing = [m for m in wanted if m not in current]
            if not missing:
                continue
            known = memo.setdefault(_memo_key(group_name, probe), {})
            todo = [m for m in missing if m not in known]
            if todo:
                group = GROUPS.get(group_name)
                if group_name not in states:
                    states[group_name] = group.prepare(genotype, init_seed, num_classes, cfg, device)
                known.update(group.score(states[group_name], probe, todo, cfg))
            current.update({m: known[m] for m in missing})
            changed = True
        digests[name] = {"samples": probe.digest, "images": probe.image_digest}
    if changed or not path.is_file():
        record["wall_time"] += time.perf_counter() - start
        record["manifest"] = environment_manifest(str(device))
        write_json(path, record)
    return record


def _memo_key(group_name: str, probe: Probe) -> tuple[str, str]:
    return group_name, probe.digest if GROUPS.get(group_name).uses_labels else probe.image_digest


def run_sensitivity(
    dataset: ImageDataset,
    poisons: Mapping[str, Path],
    cfg: SensitivityConfig,
    *,
    seed: int,
    pool_ops: str,
    device: torch.device,
    out_dir: Path,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> pd.DataFrame | None:
    """Score this shard's architectures; when every architecture is done, write Table 2 and return it.

    ``poisons`` maps an attack key (the table's row) to its poison file for ``dataset``; ``pool_ops``
    is RoBoT's sampler setting (``[robot] pool_ops``).
    """
    if not poisons:
        raise NasauditError("Table 2 compares poisoned data with clean data; give at least one poison")
    if CLEAN in poisons:
        raise NasauditError(f"{CLEAN!r} names the unpoisoned data; give the poison another name")
    k, n = shard
    if not 0 <= k < n:
        raise NasauditError(f"shard {k}/{n} is invalid; use K/N with 0 <= K < N")
    metric_groups(cfg.metrics)
    indices = fixed_indices(len(dataset.train), cfg, seed)
    versions = {CLEAN: dataset}
    budgets = {}
    for name, path in poisons.items():
        poison = load_poison(Path(path), dataset)
        versions[name], budgets[name] = apply_poison(poison, dataset), poison.budget
    probes = {name: make_probe(data, indices, device) for name, data in versions.items()}
    genotypes = sample_pool(2 * cfg.architectures, seed, pool_ops)[: cfg.architectures]
    folder = Path(out_dir) / "architectures"
    paths = [folder / f"arch_{i:03d}.json" for i in range(len(genotypes))]
    mine = range(k, len(genotypes), n)
    progress_bar = bar(len(mine), desc="table2", unit="arch", enabled=progress)
    for i in mine:
        with job_lock(paths[i]):  # a second identical run waits, then finds the record complete
            architecture_job(
                i,
                genotypes[i],
                probes,
                cfg.metrics,
                cfg,
                _job_key(dataset, indices, cfg, seed, i, genotypes[i]),
                num_classes=dataset.num_classes,
                init_seed=architecture_seed(seed, i),
                device=device,
                path=paths[i],
            )
        progress_bar.update(1)
    progress_bar.close()
    if not all(p.is_file() for p in paths):
        return None
    records = [read_json(p, _ON_DELETE) for p in paths]
    if not all(_complete(r, probes, cfg.metrics) for r in records):
        return None
    algorithms = metric_algorithms(cfg.metrics)
    values = [(r["key"]["index"], r["values"]) for r in records]
    table, per_architecture = summarise(values, budgets, algorithms, dataset.name)
    write_outputs(table, per_architecture, Path(out_dir))
    write_json(
        Path(out_dir) / "table2.json",
        {
            "config": asdict(cfg),
            "seed": seed,
            "pool_ops": pool_ops,
            "dataset": dataset.name,
            "poisons": {name: str(path) for name, path in poisons.items()},
            "budgets": budgets,
            "manifest": environment_manifest(str(device)),
        },
    )
    return table


def _complete(record: dict[str, Any], probes: Mapping[str, Probe], metrics: Sequence[str]) -> bool:
    """False while another shard has not yet scored this architecture on the current data and metrics."""
    return all(
        record["digests"].get(name, {}).get("samples") == probe.digest
        and all(m in record["values"].get(name, {}) for m in metrics)
        for name, probe in probes.items()
    )
