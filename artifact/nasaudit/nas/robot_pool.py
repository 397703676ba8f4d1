"""RoBoT's candidate pool: random DARTS genotypes scored once by zero-cost proxies (RoBoT's
search.py get_pool).

The pool is a function of (seed, size, op columns) and its scores of the search data's one proxy
batch, so every trial with the same data and seed shares one pool on disk. Scoring is the costly part
(paper: 60,000 architectures), so it runs in chunks, each saved atomically as it finishes; a killed
run recomputes only the missing chunks. Each architecture's network is initialised from a seed
derived from (seed, pool index), and the architectures run in stacks of ``pool_stack`` consecutive
pool indices (stacks never straddle chunks: ``pool_stack`` divides ``pool_chunk``), which makes a
chunk's scores independent of the order and chunking in which they were computed.

One 16-channel network is too small to keep a GPU busy, so a stack of them runs as ONE network
(:class:`~nasaudit.spaces.darts.stacked.StackedNetworks`): :func:`score_networks` scores the whole
stack with one train-mode forward of the batch, differentiated once for grad_norm, snip, fisher and
grasp's g, once more for grasp's Hessian-gradient product and once for jacob_cov, then synflow's own
float64 pass. It equals calling the registered proxies on each network alone (tested); the stack
size changes scores only by float rounding (grouped kernels sum in another order), so it is part of
the pool's key.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.config import RobotConfig
from nasaudit.data.datasets import ImageDataset, Split
from nasaudit.data.device import DeviceData
from nasaudit.errors import NasauditError
from nasaudit.io import environment_manifest, write_json, write_npz
from nasaudit.progress import bar as progress_bar
from nasaudit.proxies import PROXIES
from nasaudit.proxies.zero_cost import jacob_cov_of
from nasaudit.seeds import derive_seed
from nasaudit.seeds import rng as seeded_rng
from nasaudit.spaces.darts import EDGE_OPS, EDGES, PRIMITIVES, EvalNetwork, Genotype, derive_genotype
from nasaudit.spaces.darts.stacked import StackedLinear, StackedNetworks, scored_layers

POOL_FORMAT = "nasaudit-robot-pool/2"

#: [robot] pool_ops -> what the 7 columns of a random weight row mean. As run, RoBoT drew 7 columns but
#: derived them against the first 7 DARTS primitives, so column 0 is 'none' and dil_conv_5x5 is never
#: sampled.
POOL_OPS: dict[str, Sequence[str]] = {"as_run": PRIMITIVES[:7], "full": EDGE_OPS}

_DRAW_BLOCK = 1000  # weight rows drawn per generator call (does not change the stream)


def sample_pool(size: int, seed: int, pool_ops: str) -> list[Genotype]:
    """``size`` genotypes drawn as RoBoT draws them, duplicates collapsed (first draw kept, in order).

    Each draw: uniform [0, 1) weights of shape (2 cells × 14 edges × 7 columns), softmaxed per edge
    and derived the DARTS way (per node the 2 inputs with the strongest non-'none' weight, op = argmax).
    """
    columns = POOL_OPS[pool_ops]
    candidates = [columns] * len(EDGES)
    rng = seeded_rng(seed, "robot_pool", "sample")
    seen: dict[Genotype, None] = {}
    for start in range(0, size, _DRAW_BLOCK):
        block = rng.random((min(_DRAW_BLOCK, size - start), 2, len(EDGES), len(columns)))
        for weights in block:
            seen.setdefault(derive_genotype(weights[0], weights[1], candidates, candidates))
    return list(seen)


def proxy_batch(data: ImageDataset, seed: int, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The one fixed batch that scores the whole pool: seeded indices, un-augmented, normalised.

    Drawn from the first half of the training split, the half the queries train on: as run, it is the
    first batch of that half's shuffled loader (ztcoalson/RoBoT darts_space/search.py:156-159, 284-285).
    """
    rng = seeded_rng(seed, "robot_pool", "proxy_batch")
    idx = rng.choice(len(data.train) // 2, size=size, replace=False)
    chosen = DeviceData(Split(data.train.images[idx], data.train.labels[idx]), data, device)
    return chosen.transform(chosen.images), chosen.labels


def proxy_network(
    genotype: Genotype, channels: int, layers: int, num_classes: int, init_seed: int
) -> EvalNetwork:
    """The DARTS eval network, default init from ``init_seed``, no auxiliary head, drop-path 0, train mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = EvalNetwork(genotype, channels, layers, num_classes, auxiliary=False)
    net.drop_path_prob = 0.0
    return net.train()


def architecture_seed(seed: int, index: int) -> int:
    """The init seed of pool member ``index``: independent of chunking and scoring order."""
    return derive_seed(seed, "robot_pool", "architecture", index)


# --- what a stack needs -------------------------------------------------------------------------------

#: Peak GPU memory per stacked network (16 channels, 8 cells, the proxies' batch of 64): 25 of them
#: peaked at 37.3-38.5 GiB on an H200 in the paper profile's preflight (docs/gpu-check.md).
STACK_NET_GIB = 1.6


def stack_gib(cfg: RobotConfig) -> float:
    """About how much GPU memory scoring one stack of ``pool_stack`` networks takes at its peak."""
    return cfg.pool_stack * STACK_NET_GIB


def check_stack_fits(cfg: RobotConfig, device: torch.device) -> None:
    """One line before any scoring when a stack cannot fit the GPU, naming a ``pool_stack`` that does
    (a divisor of ``pool_chunk``; the scores equal those of any other stack up to rounding)."""
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    if stack_gib(cfg) <= total:
        return
    room = 0.9 * total
    fits = [k for k in range(1, cfg.pool_stack) if not cfg.pool_chunk % k and k * STACK_NET_GIB <= room]
    raise NasauditError(
        f"[robot] pool_stack = {cfg.pool_stack} scores that many networks at once (about "
        f"{stack_gib(cfg):.0f} GiB) and {device} has {total:.0f} GiB: add "
        f"--set robot.pool_stack={max(fits, default=1)} (the scores are equal up to rounding)"
    )


# --- scoring a stack of networks ---------------------------------------------------------------------


def _grads(output: Tensor, inputs: Sequence[Tensor], **kwargs: Any) -> list[Tensor]:
    grads = torch.autograd.grad(output, list(inputs), allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _per_member(k: int, layers: Sequence[nn.Module], terms: Sequence[Tensor]) -> Tensor:
    """Σ over layers of each layer's term summed per member network: (k,) float64.

    ``terms[i]`` has the shape of layer i's weight (or of its output channels) in member-major order.
    """
    total = torch.zeros(k, dtype=torch.float64, device=terms[0].device if terms else None)
    for layer, term in zip(layers, terms, strict=True):
        members = layer.members  # type: ignore[union-attr]
        total.index_add_(0, members, term.reshape(len(members), -1).sum(dim=1).double())
    return total


def _fan_in(layer: nn.Module) -> int:
    """Weights per output channel of one member's layer (fisher's per-channel broadcast)."""
    weight = layer.weight  # type: ignore[union-attr]
    return weight.shape[-1] if isinstance(layer, StackedLinear) else weight[0].numel()


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Σ over members of each member's mean cross-entropy; its gradient is each member's own."""
    per_sample = F.cross_entropy(logits.transpose(1, 2), targets[:, None].expand(-1, logits.shape[1]),
                                 reduction="none")  # fmt: skip
    return per_sample.mean(dim=0).sum()


def _loss_pass(
    stack: StackedNetworks, inputs: Tensor, targets: Tensor, wanted: set[str]
) -> dict[str, Tensor]:
    """grad_norm, snip, grasp, fisher and jacob_cov of every member from ONE train-mode forward.

    One backward gives ∂L/∂W (grad_norm, snip, grasp's g) and ∂L/∂a for every conv/linear output
    (fisher); grasp's Hessian-gradient product differentiates that backward once more; jacob_cov
    differentiates the summed logits of the same forward with respect to each member's input copy.
    """
    k = stack.k
    layers = scored_layers(stack)
    weights = [layer.weight for layer in layers]  # type: ignore[union-attr]
    activations: list[Tensor] = []
    handles = (
        [layer.register_forward_hook(lambda _m, _a, output: activations.append(output)) for layer in layers]
        if "fisher" in wanted
        else []
    )
    probe = inputs.detach()[:, None].expand(-1, k, *inputs.shape[1:]).clone()
    probe.requires_grad_("jacob_cov" in wanted)
    try:
        logits = stack(probe)
    finally:
        for handle in handles:
            handle.remove()
    out: dict[str, Tensor] = {}
    grads = _grads(_loss(logits, targets), [*weights, *activations], create_graph="grasp" in wanted,
                   retain_graph=True)  # fmt: skip
    weight_grads, act_grads = grads[: len(weights)], grads[len(weights) :]
    if "grasp" in wanted:
        projection = sum((g.detach() * g).sum() for g in weight_grads)
        hessian_grad = _grads(projection, weights, retain_graph=True)  # type: ignore[arg-type]
        out["grasp"] = _per_member(
            k, layers, [-w.detach() * h for w, h in zip(weights, hessian_grad, strict=True)]
        )
    if "jacob_cov" in wanted:
        (jacobian,) = torch.autograd.grad(logits.sum(), probe)
        out["jacob_cov"] = jacob_cov_of(jacobian.transpose(0, 1))
    weight_grads = [g.detach() for g in weight_grads]
    norms = [
        g.reshape(len(layer.members), -1).norm(dim=1) for layer, g in zip(layers, weight_grads, strict=True)
    ]
    out["grad_norm"] = _per_member(k, layers, norms)  # each layer's norm per member, summed over layers
    out["snip"] = _per_member(
        k, layers, [(w.detach() * g).abs() for w, g in zip(weights, weight_grads, strict=True)]
    )
    if "fisher" in wanted:
        fisher_terms = []
        for layer, act, grad in zip(layers, activations, act_grads, strict=True):
            fan_in = _fan_in(layer)
            product = (act.detach() * grad.detach()).reshape(len(act), layer.weight.numel() // fan_in, -1)
            fisher_terms.append(0.5 * product.sum(dim=2).pow(2).mean(dim=0) * fan_in)
        out["fisher"] = _per_member(k, layers, fisher_terms)
    return out


def _synflow(stack: StackedNetworks, inputs: Tensor) -> Tensor:
    """synflow of every member (formula of proxies.zero_cost.synflow); turns ``stack`` into its float64,
    all-positive version, so it runs last."""
    stack.double()
    with torch.no_grad():
        for tensor in stack.state_dict().values():
            tensor.abs_()
    layers = scored_layers(stack)
    weights = [layer.weight for layer in layers]  # type: ignore[union-attr]
    ones = torch.ones((1, stack.k, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    grads = _grads(stack(ones).sum(), weights)
    return _per_member(stack.k, layers, [(w.detach() * g).abs() for w, g in zip(weights, grads, strict=True)])


#: Proxies computed for a whole stack of networks at once; any other goes to PROXIES one net at a time.
STACKED_PROXIES = frozenset({"grad_norm", "snip", "grasp", "fisher", "synflow", "jacob_cov"})


def score_networks(
    nets: Sequence[EvalNetwork], inputs: Tensor, targets: Tensor, proxies: Sequence[str]
) -> np.ndarray:
    """The proxies of freshly built train-mode networks: (len(nets), len(proxies)) float64, may be NaN.

    The networks run as one :class:`StackedNetworks` (a copy: ``nets`` stay untouched), so the whole
    stack costs one forward and its backwards; the scores equal scoring each network alone (tested).
    """
    wanted = set(proxies) & STACKED_PROXIES
    values: dict[str, Tensor] = {}
    if wanted:
        stack = StackedNetworks(nets).to(inputs.device).train()
        with torch.enable_grad():
            values = _loss_pass(stack, inputs, targets, wanted - {"synflow"}) if wanted - {"synflow"} else {}
            if "synflow" in wanted:
                values["synflow"] = _synflow(stack, inputs)
    columns = [
        values[name].cpu().numpy() if name in values
        else np.array([PROXIES.get(name)(net, inputs, targets) for net in nets], dtype=np.float64)
        for name in proxies
    ]  # fmt: skip
    return np.stack(columns, axis=1) if columns else np.zeros((len(nets), 0))


# --- the pool on disk ------------------------------------------------------------------------------


def pool_key(data: ImageDataset, seed: int, cfg: RobotConfig) -> dict[str, Any]:
    """Everything a pool's scores depend on; its hash names the pool folder."""
    return {
        "format": POOL_FORMAT,
        "dataset": data.name,
        "train_sha256": data.train.sha256,
        "mean": list(data.mean),
        "std": list(data.std),
        "num_classes": data.num_classes,
        "seed": seed,
        "pool_size": cfg.pool_size,
        "pool_ops": cfg.pool_ops,
        "proxies": list(cfg.proxies),
        "proxy_batch": cfg.proxy_batch,
        "pool_stack": cfg.pool_stack,
        "channels": cfg.channels,
        "layers": cfg.layers,
    }


def pool_folder(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "robot_pool" / digest[:20]


def _chunk_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"chunk_{start:07d}_{stop:07d}.npz"


def _read_chunk(path: Path, rows: int, columns: int) -> np.ndarray | None:
    """A finished chunk's scores, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            scores = z["scores"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    return scores if scores.shape == (rows, columns) else None


Scorer = Callable[[Sequence[EvalNetwork], Tensor, Tensor, Sequence[str]], np.ndarray]


def score_pool(
    pool: Sequence[Genotype],
    data: ImageDataset,
    seed: int,
    cfg: RobotConfig,
    device: torch.device,
    folder: Path,
    *,
    progress: bool = False,
    scorer: Scorer = score_networks,
) -> np.ndarray:
    """The pool × proxies score matrix, computed chunk by chunk into ``folder`` (resumable).

    ``folder`` must be keyed by :func:`pool_key` (see :func:`pool_folder`): its chunks are trusted.
    """
    folder = Path(folder)
    final = folder / "scores.npz"
    columns = len(cfg.proxies)
    done = _read_chunk(final, len(pool), columns)
    if done is not None:
        return done
    if not (folder / "pool.json").is_file():
        key = pool_key(data, seed, cfg)
        write_json(
            folder / "pool.json",
            {"key": key, "n_unique": len(pool), "created_on": environment_manifest(str(device))},
        )
    inputs, targets = proxy_batch(data, seed, cfg.proxy_batch, device)
    chunks = []
    bar = progress_bar(len(pool), desc="RoBoT pool", unit="arch", enabled=progress)
    for start in range(0, len(pool), cfg.pool_chunk):
        stop = min(start + cfg.pool_chunk, len(pool))
        path = _chunk_path(folder, start, stop)
        scores = _read_chunk(path, stop - start, columns)
        if scores is None:
            rows = []
            for first in range(start, stop, cfg.pool_stack):
                members = range(first, min(first + cfg.pool_stack, stop))
                nets = [
                    proxy_network(
                        pool[i], cfg.channels, cfg.layers, data.num_classes, architecture_seed(seed, i)
                    )
                    for i in members
                ]
                rows.append(scorer(nets, inputs, targets, cfg.proxies))
                bar.update(len(members))
            scores = np.concatenate(rows) if rows else np.zeros((0, columns))
            write_npz(path, {"scores": scores})
        else:
            bar.update(stop - start)
        chunks.append(scores)
    bar.close()
    scores = np.concatenate(chunks) if chunks else np.zeros((0, columns))
    write_npz(final, {"scores": scores, "genotypes": _encode(pool)})
    for start in range(0, len(pool), cfg.pool_chunk):
        _chunk_path(folder, start, min(start + cfg.pool_chunk, len(pool))).unlink(missing_ok=True)
    return scores


def _encode(pool: Sequence[Genotype]) -> np.ndarray:
    """The pool as int8 (N, 2 cells, 8 edges, [op index in PRIMITIVES, input]) for the record."""
    out = np.zeros((len(pool), 2, 8, 2), dtype=np.int8)
    for i, genotype in enumerate(pool):
        for c, pairs in enumerate((genotype.normal, genotype.reduce)):
            for k, (op, inp) in enumerate(pairs):
                out[i, c, k] = (PRIMITIVES.index(op), inp)
    return out


# --- combining the proxies -------------------------------------------------------------------------


def normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max normalise each proxy (column) over the pool; non-finite values become NaN.

    A column whose finite values are all equal normalises to 0 (it cannot rank anything).
    """
    s = np.where(np.isfinite(scores), scores, np.nan).astype(np.float64)
    out = np.full_like(s, np.nan)
    for m in range(s.shape[1]):
        finite = ~np.isnan(s[:, m])
        if not finite.any():
            continue
        lo, hi = s[finite, m].min(), s[finite, m].max()
        out[finite, m] = (s[finite, m] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def weighted_scores(normalised: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """score(a) = Σ_m w_m · norm_m(a), NaN terms skipped."""
    return np.where(np.isnan(normalised), 0.0, normalised) @ np.asarray(weights, dtype=np.float64)
