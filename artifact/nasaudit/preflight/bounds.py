"""The profile a preflight runs: every size as the profile has it, every count bounded.

Networks, channels, cells, batch sizes, resolutions, stack sizes, budgets as fractions and dataset
sizes stay the profile's, because they decide shapes and memory. What is bounded is how often things
repeat: epochs, search steps, pool and archive sizes, trials. Together with the batch cap
(``nasaudit.batch_cap``: at most a few batches per loop over data) every stage then runs each of its
code paths for a few steps. One function per profile section, each bound with its reason.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nasaudit.config import (
    DefensesConfig,
    GCConfig,
    NSGANetV2Config,
    PDartsConfig,
    Profile,
    RobotConfig,
    SensitivityConfig,
    TenasConfig,
    TrainConfig,
)
from nasaudit.preflight.synthetic import synthetic_name

GIB = 2**30
# RoBoT's stacked pool networks on a CPU: memory per stacked network (≈ 1.6 GiB at proxy_batch 64 on a
# GPU and measured alike on a CPU), the share of this machine's available memory the stack may take, and
# at most two networks: they run the stacked path, and more only cost time (≈ 25 s each on 2 cores).
ROBOT_NET_GIB = 1.6
CPU_MEMORY_SHARE = 0.5
CPU_STACK = 2


def bounded_profile(profile: Profile, device: torch.device) -> tuple[Profile, dict[str, list[str]]]:
    """The preflight's copy of ``profile``, and notes per profile section on what differs beyond counts
    (they go into the report lines of the tasks that read that section)."""
    notes: dict[str, list[str]] = {}
    bounded = replace(
        profile,
        train=training(profile.train),
        surrogate=training(profile.surrogate),
        mbv3_train=training(profile.mbv3_train),
        random_baseline=replace(profile.random_baseline, n=1),  # one random architecture per space
        robot=robot(profile.robot, device, notes),
        sensitivity=sensitivity(profile.sensitivity),
        defenses=defenses(profile.defenses),
        nsganetv2=nsganetv2(profile.nsganetv2),
        table1=replace(profile.table1, trials=1),  # a trial is the same code as any other
        table3=replace(profile.table3, trials=1),
        table4=replace(profile.table4, trials=1),
        table5=replace(profile.table5, trials=1),
        table6=replace(profile.table6, trials=1),
        pdarts=pdarts(profile.pdarts),
        tenas=tenas(profile.tenas),
        gc=gc(profile.gc),
    )
    return bounded, notes


def training(cfg: TrainConfig) -> TrainConfig:
    """One epoch: its (capped) steps, the test evaluation after the last epoch and a checkpoint."""
    return replace(cfg, epochs=1, checkpoint_every=1)


def robot(cfg: RobotConfig, device: torch.device, notes: dict[str, list[str]]) -> RobotConfig:
    """A pool of one stack (the profile's on a GPU; on a CPU at most two networks that fit the
    memory); three queries: the random one, one BO proposal (GP fit and acquisition) and one of the
    greedy phase; a smaller acquisition search (CPU-side)."""
    stack = cfg.pool_stack
    if device.type != "cuda":
        stack = min(stack, CPU_STACK, _cpu_stack())
        if stack < cfg.pool_stack:
            notes.setdefault("robot", []).append(
                f"pool_stack {cfg.pool_stack} lowered to {stack} on a CPU (≈ {ROBOT_NET_GIB} GiB and "
                f"tens of seconds per stacked network); a GPU run keeps {cfg.pool_stack}"
            )
    return replace(
        cfg,
        pool_size=stack,
        pool_chunk=stack,
        pool_stack=stack,
        queries=3,
        bo_init=1,
        bo_steps=1,
        acquisition_samples=min(cfg.acquisition_samples, 1000),
        acquisition_starts=min(cfg.acquisition_starts, 2),
        gp_restarts=min(cfg.gp_restarts, 1),
        query=training(cfg.query),
    )


def _cpu_stack() -> int:
    """How many stacked RoBoT networks this machine's available memory holds (at least one)."""
    available = _available_bytes()
    return max(1, int(available * CPU_MEMORY_SHARE / (ROBOT_NET_GIB * GIB))) if available else 1


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def sensitivity(cfg: SensitivityConfig) -> SensitivityConfig:
    """One architecture; two batches of samples for RoBoT's metrics and two for κ_NTK and R."""
    tenas_samples = min(cfg.tenas_samples, 2 * cfg.tenas_batch_size)
    return replace(
        cfg,
        architectures=1,
        samples=max(tenas_samples, min(cfg.samples, 2 * cfg.batch_size)),
        tenas_samples=tenas_samples,
    )


def defenses(cfg: DefensesConfig) -> DefensesConfig:
    """One KMeans initialisation (the clustering runs on the CPU at full size)."""
    return replace(cfg, relabel=replace(cfg.relabel, n_init=1))


def nsganetv2(cfg: NSGANetV2Config) -> NSGANetV2Config:
    """The fewest initial architectures a configured surrogate's cross-validation fits on, and one
    iteration of one candidate: surrogate selection, NSGA-II and the subset GA for one generation each,
    with small predictors; one (capped) epoch of fine-tuning and of each shrinking phase."""
    phases = [replace(phase, epochs=1) for phase in cfg.supernet.phases]
    return replace(
        cfg,
        initial=_fewest_initial(cfg),
        iterations=1,
        per_iteration=1,
        cart_trees=min(cfg.cart_trees, 10),
        mlp_max_iter=min(cfg.mlp_max_iter, 20),
        generations=1,
        subset_generations=1,
        finetune=training(cfg.finetune),
        supernet=replace(cfg.supernet, phases=phases),
    )


def _fewest_initial(cfg: NSGANetV2Config) -> int:
    """The smallest archive (never more than the profile's) whose cross-validation folds leave some
    surrogate of ``cfg.surrogates`` enough training points (``nas.nsganetv2.select_surrogate``; an RBF
    with a linear tail needs d + 2, so the paper's RBF alone needs 54 architectures)."""
    from nasaudit.nas.nsganetv2 import SURROGATES
    from nasaudit.spaces.mbv3 import N_VARS

    need = min(SURROGATES.get(name).min_samples(cfg, N_VARS) for name in cfg.surrogates)
    n = 4
    while n - -(-n // max(2, min(cfg.cv_folds, n // 2))) < need:  # training part: n minus the largest fold
        n += 1
    return min(n, cfg.initial)


def pdarts(cfg: PDartsConfig) -> PDartsConfig:
    """Per stage one warm-up epoch and one epoch of α steps, the last one evaluated; the per-dataset
    skip-connect dropout applies to the datasets' synthetic stand-ins too."""
    by_dataset = {**cfg.skip_dropout_by_dataset}
    by_dataset.update({synthetic_name(name): rates for name, rates in cfg.skip_dropout_by_dataset.items()})
    return replace(
        cfg,
        epochs=2,
        warmup_epochs=min(cfg.warmup_epochs, 1),
        eval_epochs=min(cfg.eval_epochs, 1),
        skip_dropout_by_dataset=by_dataset,
    )


def tenas(cfg: TenasConfig) -> TenasConfig:
    """One repeat per candidate removal, one batch of linear-region crops, and one op round (pruning
    to one op per edge at once) before the edge rounds: the pruned genotype is still complete. The batch
    cap also bounds each round's scored removals (``Scorer.score``): the others rank as unchanged."""
    return replace(cfg, repeats=1, lr_batches=1, prune_number=max(len(cfg.ops) - 1, 1))


def gc(cfg: GCConfig) -> GCConfig:
    """One Adam step on the poisons (its double backward) and the final evaluation; one GradPC epoch."""
    return replace(cfg, steps=1, gradpc_epochs=min(cfg.gradpc_epochs, 1))
