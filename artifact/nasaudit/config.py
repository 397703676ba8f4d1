"""Profiles: every size and hyperparameter, as typed data read from TOML.

``paper.toml`` holds the paper's values (each with a comment citing its source); ``smoke.toml``
shrinks them so the whole pipeline runs in minutes on two CPU cores. Code reads a ``Profile`` and
never branches on a profile's name. Each section is a dataclass below; a plugin module (an algorithm,
an attack) may instead register its own section's dataclass in ``SECTIONS``, built and checked the
same way, its defaults standing in for a table a profile leaves out (docs/extending.md). A setting
with a fixed set of choices (as run vs as printed) is a ``Literal`` checked here on load; a registry
is only where users add plugins (``nasaudit.registry``).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nasaudit.errors import NasauditError
from nasaudit.precision import check_precision
from nasaudit.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent / "profiles"
# Profile sections that plugin modules declare for themselves: [name] -> its dataclass.
SECTIONS: Registry[type] = Registry("profile section")


@dataclass(frozen=True)
class AugmentConfig:
    """Random crop (zero padding), horizontal flip, cutout (0 disables), optional AutoAugment."""

    crop_padding: int
    flip: bool
    cutout: int
    autoaugment: bool = False  # torchvision's CIFAR-10 AutoAugment policy per image, after crop and flip


@dataclass(frozen=True)
class ExperimentConfig:
    """The grid: which datasets, poisoning budgets and how many independent trials per condition."""

    datasets: list[str]
    budgets: list[float]
    trials: int


@dataclass(frozen=True)
class TrainConfig:
    """One training run: SGD with momentum, cosine schedule (per epoch, or per step) to ``lr_min``."""

    epochs: int
    batch_size: int
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float  # max gradient norm; 0 disables clipping
    auxiliary_weight: float  # weight of the auxiliary-head loss; 0 disables the head
    drop_path: float  # final drop-path probability, ramped linearly from 0 over the epochs
    augment: AugmentConfig
    eval_every: int  # evaluate on the test split every N epochs (0: only at the end)
    checkpoint_every: int  # write a resumable checkpoint every N epochs
    nesterov: bool = False  # Nesterov momentum (OFA's run manager uses it)
    lr_per_step: bool = False  # the cosine is evaluated at every step (OFA's run manager), not per epoch
    precision: str = "fp32"  # forward passes: "fp32" (as run) or "bf16" autocast; nasaudit.precision

    def __post_init__(self) -> None:
        check_precision(self.precision)


@dataclass(frozen=True)
class DartsNetConfig:
    """Size of the DARTS evaluation network."""

    channels: int
    layers: int


@dataclass(frozen=True)
class RandomBaselineConfig:
    """Random architectures of a space, retrained: the reference for ΔImp.

    In the DARTS space trial k retrains the k-th of ``genotypes`` (published architectures by name)
    when it lists any, else a genotype drawn by ``sampling``.
    """

    n: int
    sampling: Literal["as_run", "distinct"]  # DARTS space: as_run: each edge's input drawn independently
    genotypes: list[str]  # DARTS space: published genotypes retrained instead of drawing; [] draws


@dataclass(frozen=True)
class RobotConfig:
    """RoBoT (He et al. 2024; paper §3.4): a proxy-scored random pool, BO over the proxy weights, then a
    greedy phase."""

    pool_size: int  # random genotypes drawn; duplicates collapse
    pool_ops: Literal["as_run", "full"]  # as_run: column 0 read as 'none' (dil_conv_5x5 never drawn)
    pool_chunk: int  # architectures scored per saved chunk (resumability only)
    pool_stack: int  # architectures run as one stacked network (speed vs memory); divides pool_chunk
    proxies: list[str]  # names in nasaudit.proxies.PROXIES
    proxy_batch: int  # un-augmented training images in the one batch that scores the whole pool
    channels: int  # initial channels of the proxy and query network
    layers: int  # cells of the proxy and query network
    queries: int  # distinct architectures trained in total (BO, then the greedy phase)
    bo_init: int  # random weight vectors evaluated before the GP proposes
    bo_steps: int  # GP-UCB proposals after those
    kappa: float  # UCB exploration weight
    acquisition_samples: int  # random points the acquisition is evaluated on
    acquisition_starts: int  # L-BFGS-B runs that maximise it further
    acquisition_seeds: str  # where they start: "random" (fresh uniform points, as run) or "best" (samples')
    gp_restarts: int  # restarts of the GP's kernel-hyperparameter optimiser
    query: TrainConfig  # a query: short training on one half, accuracy on the other


@dataclass(frozen=True)
class SensitivityConfig:
    """Table 2: training-free metrics of random architectures on clean vs poisoned samples (paper §5.2)."""

    architectures: int  # random architectures scored (one job each)
    metrics: list[str]  # names in nasaudit.proxies.PROXIES
    attacks: list[str]  # poisons compared with the clean data when the command is given none
    budget: float  # their poisoning budget
    samples: int  # fixed random training indices scoring RoBoT's metrics
    batch_size: int  # RoBoT's metrics: batch size; each metric is averaged over the batches
    channels: int  # RoBoT's proxy network (DARTS evaluation network): initial channels
    layers: int  # ... and cells
    tenas_samples: int  # κ_NTK and R: the first images of the fixed indices
    tenas_batch_size: int  # their batch size (κ averaged over batches; R counts over all samples)


@dataclass(frozen=True)
class DenoiseConfig:
    """Diffusion denoising (Hong et al. 2024): one-shot DDPM denoising at smoothing noise σ (paper §6.1)."""

    model: str  # diffusers UNet2DModel + DDPMScheduler: a hub id or a local folder
    sigma: float  # smoothing noise in [0, 1] pixel units (2σ in the DDPM's [-1, 1] units)
    add_noise: bool  # add N(0, (2σ)²) before denoising (denoised smoothing); false: the image is x_t
    store: Literal["float32", "uint8"]  # denoised images: float32 in [0, 1] (as the authors did) or levels
    batch_size: int


@dataclass(frozen=True)
class SanitizeConfig:
    """Loss-based sanitisation (Koh et al. 2021): the surrogate is the profile's [surrogate] recipe."""

    drop_fraction: float  # of each class, the highest-training-loss samples dropped


@dataclass(frozen=True)
class RelabelConfig:
    """Cluster-based relabelling: pretrained features, KMeans with one cluster per class."""

    model: str  # torchvision model name whose penultimate features are clustered
    weights: str  # torchvision weights name (downloaded on first use); "" = random init (smoke only)
    image_size: int  # images are resized to this before the feature extractor
    batch_size: int
    n_init: int  # KMeans restarts (the lowest-inertia one is kept)


@dataclass(frozen=True)
class DefensesConfig:
    """Each defense's settings (Table 4's cells are ``[table4]``)."""

    denoise: DenoiseConfig
    sanitize: SanitizeConfig
    relabel: RelabelConfig


@dataclass(frozen=True)
class MBV3Config:
    """The OFA MobileNetV3 space NSGANetV2 searches (paper Appendix A; Cai et al. 2020) and how its
    networks are built."""

    width_mult: float  # OFA width multiplier of the base channel plan
    resolutions: list[int]  # searched input resolutions; 32×32 images are upscaled to them
    dropout: float  # classifier dropout of fine-tuned and retrained networks
    drop_connect: float  # residual drop-path at retraining, scaled linearly with the block index
    init: str  # retraining starts from "search" (inherited weights), "scratch", or a supernet file


@dataclass(frozen=True)
class ShrinkPhase:
    """One phase of progressive shrinking: the choices it samples, its length and learning rate."""

    kernels: list[int]
    depths: list[int]
    expands: list[int]
    epochs: int
    lr: float  # cosine to 0 over the phase
    subnets_per_step: int  # subnets sampled per step, gradients summed (OFA's dynamic batch size)


@dataclass(frozen=True)
class SupernetConfig:
    """The weight-sharing supernet: trained by progressive shrinking, or loaded from ``weights``."""

    weights: str  # "" trains our own; else a supernet file (ours or OFA's ofa_mbv3_*), used as-is
    batch_size: int
    momentum: float
    nesterov: bool
    weight_decay: float  # on conv/linear weights and kernel transforms; none on BN and biases
    label_smoothing: float
    kd_ratio: float  # distillation from the full network trained in the first phase; 0 disables
    dropout: float
    augment: AugmentConfig
    phases: list[ShrinkPhase]
    precision: str = "fp32"  # forward passes: "fp32" (as run) or "bf16" autocast; nasaudit.precision

    def __post_init__(self) -> None:
        check_precision(self.precision)


@dataclass(frozen=True)
class NSGANetV2Config:
    """NSGANetV2 (Lu et al. 2020; paper Appendix A): archive, surrogate switching, NSGA-II, candidate
    evaluation."""

    val_size: int  # held-out training images the candidates are scored on
    initial: int  # architectures evaluated before the first surrogate
    iterations: int
    per_iteration: int  # new candidates evaluated per iteration
    surrogates: list[str]  # accuracy predictors competing by cross-validated Kendall tau
    cv_folds: int
    cart_trees: int  # trees of the CART ensemble
    gp_trend: str  # regression trend of the GP (kriging) predictor: "linear" (as run) or "constant"
    mlp_max_iter: int  # epochs of the MLP predictor
    pop_size: int  # NSGA-II
    generations: int
    crossover_prob: float  # two-point crossover
    mutation_eta: float  # polynomial mutation (rounded to integers)
    subset_pop_size: int  # the GA that picks candidates spread along FLOPs
    subset_generations: int
    tradeoff_points: int  # final front: this many highest trade-off points, plus the most accurate
    pick_rank: int  # the architecture returned: this rank by FLOPs (1 = highest) among those
    bn_calibration: int  # training images re-estimating BN statistics of an extracted subnet; 0 off
    reset_classifier: bool  # candidates get a fresh classifier before fine-tuning (as run), else inherit it
    finetune: TrainConfig  # candidate evaluation: fine-tuning of the inherited weights
    supernet: SupernetConfig


@dataclass(frozen=True)
class RobustnessTableConfig:
    """A robustness table's grid (Tables 1, 5, 6): datasets × algorithms × attacks × budgets × trials.

    An empty ``algorithms`` or ``attacks`` list means every registered one, so a grid that names none
    grows with the registries (the smoke grid does).
    """

    datasets: list[str]
    algorithms: list[str]  # NAS registry names (the baseline samplers are never table columns)
    attacks: list[str]  # attack registry names; the clean "None" row is always run
    exclude: list[str]  # "algorithm/attack" pairs left out of the grid
    budgets: list[float]
    trials: int
    variant: str = ""  # a name in nasaudit.grid.variants.VARIANTS changing every search (Table 6)


@dataclass(frozen=True)
class OODTableConfig:
    """Table 3's grid: clean searches on each search dataset, retrained and tested on each dataset."""

    datasets: list[str]  # retrained and tested on
    search_datasets: list[str]  # searched on; the entry equal to a dataset is the reference row
    algorithms: list[str]
    trials: int


@dataclass(frozen=True)
class DefenseTableConfig:
    """Table 4's grid: searches on defended poisoned data, tested against the undefended ones."""

    datasets: list[str]
    algorithms: list[str]
    conditions: list[str]  # "defense:attack"; "defense:a/b" is one cell defending against both
    exclude: list[str]  # "algorithm/attack" pairs: a condition with that attack is left out
    budget: float
    trials: int


@dataclass(frozen=True)
class SlurmConfig:
    """How the slurm runner asks for resources; each value can be overridden on the command line."""

    partition: str  # "" leaves the cluster's default partition
    time_min: int  # wall-clock limit of one task; a task past it is reported failed and retried
    gpus_per_task: int
    cpus_per_task: int
    mem_gb: int
    array_limit: int  # the cluster's MaxArraySize: ready tasks are submitted in arrays of at most this
    array_parallelism: int  # tasks of one array running at once
    poll_seconds: int  # how often the driver asks the cluster which tasks finished


@dataclass(frozen=True)
class GridConfig:
    """Running an experiment's jobs: baselines, GC victims, retries and the runners' resources."""

    samplers: list[str]  # NAS algorithms sampling their space uniformly: each is its space's baseline
    victim_attacks: list[str]  # attacks crafted against the algorithm's clean victim (one poison each)
    per_trial_poisons: bool  # false (as run): one poison per (dataset, attack, budget) for all trials
    trial_shared_attacks: list[
        str
    ]  # with per_trial_poisons: attacks still sharing one poison (deterministic)
    train_subset: int  # 0: the whole training set; N: its first N images, for every stage (smoke runs)
    retries: int  # extra attempts of a failed task within one run
    cpu_workers: int  # local runner's worker processes when no GPU is visible
    require_gpu: bool  # refuse to run locally on a machine without a GPU
    reference_gpu_images_per_second: float  # DARTS eval-network retraining rate: CPU timings -> GPU-hours
    slurm: SlurmConfig


@dataclass(frozen=True)
class PDartsConfig:
    """P-DARTS (Chen et al. 2019; paper §3.4): stages of growing depth, each ending by dropping every
    edge's weakest ops."""

    channels: int  # initial channels C of every stage's supernet
    layers: list[int]  # cells of the supernet, per stage
    keep_ops: list[int]  # candidates kept per edge after each stage (the last must be 1)
    epochs: int  # per stage
    warmup_epochs: int  # first epochs of a stage that train weights only (α frozen)
    train_portion: float  # share of the training split that trains weights; the rest trains α
    batch_size: int
    lr: float  # weights: SGD, cosine from lr to lr_min within each stage
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float  # max gradient norm, of the weights and (separately) of α
    arch_lr: float  # α: Adam
    arch_betas: list[float]
    arch_weight_decay: float
    skip_dropout: list[float]  # initial skip-connect dropout per stage
    skip_dropout_by_dataset: dict[str, list[float]]  # per-dataset overrides of skip_dropout
    skip_dropout_decay: float  # after warm-up p·exp(−(epoch − warmup)·decay); during warm-up linear
    max_skips: int  # skip-connects allowed in the final normal cell
    eval_epochs: int  # last epochs of a stage that also report arch-val accuracy (reporting only)
    augment: AugmentConfig  # of both halves (Table 6 switches it off)
    precision: str = "fp32"  # forward passes: "fp32" (as run) or "bf16" autocast; nasaudit.precision

    def __post_init__(self) -> None:
        check_precision(self.precision)


@dataclass(frozen=True)
class TenasConfig:
    """TE-NAS as run (Chen et al. 2021; paper §3.4): a tiny supernet pruned by κ_NTK and linear-region
    ranks, no training."""

    ops: list[str]  # candidate ops on every edge at the start (DARTS op names; 'none' never)
    channels: int  # C of the scoring supernets
    batch_size: int  # augmented training images in each κ_NTK batch
    augment: AugmentConfig  # of those images
    repeats: int  # Δκ and ΔR are each averaged over this many batches
    prune_number: int  # ops removed from each multi-op edge per round (never its last one)
    precision: int  # Δκ, ΔR rounded to this many decimals; ranks compare this many significant figures
    init: Literal["default", "kaiming"]  # PyTorch's init (as run), or Kaiming re-drawn before every repeat
    # as_run (prune_tenas.py): a new rank whenever unrounded means differ; rounded: ties at ``precision``
    rank_ties: Literal["as_run", "rounded"]
    edge_reference: str  # "as_run" (one κ reference net of all 14 edges for the edge stage) or "pruned"
    lr_input_size: int  # linear regions: side of the one-channel crops fed to the stem-less net
    lr_batch_size: int  # crops per train-mode forward
    lr_batches: int  # forwards; R counts the distinct ReLU patterns over all of them


@dataclass(frozen=True)
class GCConfig:
    """Gradient canceling (paper Algorithm 2) and GradPC, which perturbs the victim into its target θ.

    The string settings choose between what the authors ran (crafting/run_gc.py, run_gradpc.py of
    their NSGANetV2 fork) and Algorithm 2 as printed; docs/fidelity.md lists both.
    """

    steps: int  # S: Adam steps on the perturbations
    lr: float  # Adam learning rate, in the units of ``units``
    epsilon_255: int  # ℓ∞ bound of a perturbation, in 1/255 pixel units
    units: Literal["normalised", "pixel"]  # Δ optimised in normalised input units (as run) or [0, 1] pixels
    # per_batch: Σ_b ‖(1−p)·g_clean + p·g_b‖² (as run); joint: ½‖(1−p)·g_clean + p·g_adv‖²
    objective: Literal["per_batch", "joint"]
    model_mode: Literal["train", "eval"]  # BN on each batch's statistics (as run), or on running ones
    poison_batch_size: int  # poisons per batch, a fixed seeded partition: one BN batch, one per-batch term
    gradpc_lr: float  # length of each L2-normalised gradient-ascent step
    gradpc_radius: (
        float  # L2 ball around the trained θ0 (all targeted parameters as one vector); 0: no GradPC
    )
    gradpc_epochs: int
    gradpc_batch_size: int  # GradPC's batches and then g_clean's (one shuffled loader, as run)


@dataclass(frozen=True)
class ResultsConfig:
    """What a trial reports from its retraining (tables, ΔImp., the best clean trial for GC)."""

    accuracy: str  # "best": the best evaluated epoch's test accuracy (as the authors read it); "final"


@dataclass(frozen=True)
class Profile:
    experiment: ExperimentConfig
    darts_net: DartsNetConfig
    train: TrainConfig  # retraining of found architectures (the P-DARTS evaluation recipe)
    surrogate: TrainConfig  # the CIFAR ResNet-18 used by CLF and loss-based sanitisation
    random_baseline: RandomBaselineConfig
    robot: RobotConfig
    sensitivity: SensitivityConfig  # Table 2
    defenses: DefensesConfig  # Table 4
    mbv3: MBV3Config  # NSGANetV2's search space and its networks
    mbv3_train: TrainConfig  # retraining of mbv3 architectures (NSGANetV2's CIFAR recipe)
    nsganetv2: NSGANetV2Config
    grid: GridConfig
    table1: RobustnessTableConfig
    table3: OODTableConfig
    table4: DefenseTableConfig
    table5: RobustnessTableConfig
    table6: RobustnessTableConfig
    pdarts: PDartsConfig
    tenas: TenasConfig
    gc: GCConfig
    results: ResultsConfig
    name: str = ""
    plugins: dict[str, Any] = dataclasses.field(default_factory=dict)  # the SECTIONS' tables, built

    def __getattr__(self, name: str) -> Any:
        """A registered plugin section, read like a built-in one (``profile.mysection``)."""
        plugins = self.__dict__.get("plugins", {})
        if name in plugins:
            return plugins[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _check(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert one TOML value to ``hint``; the error names the key and the file."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return _check_choice(value, typing.get_args(hint), key, source)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise NasauditError(f"{source}: [{key}] must be a table")
        return _build(hint, value, key, source)
    if origin in (list, dict):
        return _check_items(value, origin, typing.get_args(hint)[-1], key, source)
    if origin in (typing.Union, types.UnionType):
        return _check_union(value, hint, key, source)
    return _check_scalar(value, hint, key, source)


def _check_choice(value: Any, choices: tuple[Any, ...], key: str, source: str) -> Any:
    if value not in choices or type(value) is not type(choices[0]):
        names = ", ".join(map(str, choices))
        raise NasauditError(f"{source}: {key} must be one of: {names}; got {value!r}")
    return value


def _check_items(value: Any, container: type, item: Any, key: str, source: str) -> Any:
    """A list (``key[i]``) or table (``key.name``) of values of one type, each checked."""
    if not isinstance(value, container):
        raise NasauditError(f"{source}: {key} must be a {'list' if container is list else 'table'}")
    if container is list:
        return [_check(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return {k: _check(v, item, f"{key}.{k}", source) for k, v in value.items()}


def _check_union(value: Any, hint: Any, key: str, source: str) -> Any:
    """The first of the union's types the value converts to (None only where the union allows it)."""
    options = typing.get_args(hint)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is not type(None):
            try:
                return _check(value, option, key, source)
            except NasauditError:
                continue
    raise NasauditError(f"{source}: {key} = {value!r} is not a {hint}")


def _check_scalar(value: Any, hint: type, key: str, source: str) -> Any:
    """A bool, int, float or str; an integer stands for a float, a bool never for an integer."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise NasauditError(f"{source}: {key} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise NasauditError(f"{source}: {key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


_NOT_IN_TOML = ("name", "plugins")  # a Profile's own fields that no TOML table sets


def _build(cls: type, table: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_IN_TOML]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise NasauditError(f"{source}: unknown key {key!r}; allowed here: {', '.join(fields)}")
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    missing = [f for f in fields if f not in table and f not in optional]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise NasauditError(f"{source}: missing key {key!r}")
    present = [f for f in fields if f in table]
    values = {f: _check(table[f], hints[f], f"{prefix}.{f}" if prefix else f, source) for f in present}
    try:
        return cls(**values)
    except NasauditError as exc:  # a value its section refuses (__post_init__)
        raise NasauditError(f"{source}: [{prefix}] {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a syntax error is one line naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise NasauditError(f"{Path(path).name}: not valid TOML ({exc})") from None


def _override_value(text: str) -> Any:
    """A ``--set`` value read as TOML (``3``, ``true``, ``[0.1, 0.5]``, ``"x"``), else as a bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(table: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``table`` (a profile's TOML) with each ``section.key=value`` set; ``table`` itself is left as is.

    Only the syntax is checked here; whether the key exists and the value has its type is checked when
    the profile is built, like a value written in the file.
    """
    table = copy.deepcopy(table)
    for override in overrides:
        path, sep, text = override.partition("=")
        parts = path.strip().split(".")
        if not sep or not all(parts):
            raise NasauditError(f"--set {override!r}: write it as section.key=value (e.g. train.epochs=10)")
        node = table
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: depth + 1])
                raise NasauditError(f"--set {override!r}: {where} is a value, not a section")
        node[parts[-1]] = _override_value(text.strip())
    return table


def load_profile(name_or_path: str | Path, overrides: Iterable[str] | None = ()) -> Profile:
    """A packaged profile by name (``smoke``, ``paper``) or a TOML file by path, with ``--set`` overrides.

    An override changes the profile every job reads, so it enters the identity of every job whose
    sections it touches (``runs.profile_sections``); the profile keeps its name (and results folder).
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
            raise NasauditError(
                f"unknown profile {str(name_or_path)!r}; choose one of: {known}, or a .toml path"
            )
    if not path.is_file():
        raise NasauditError(f"profile file {path} does not exist")
    table = read_toml(path)
    profile = _build_profile(table, path.name)
    if overrides:
        profile = _build_profile(apply_overrides(table, overrides), "--set")
    return dataclasses.replace(profile, name=path.stem)


def _build_profile(table: dict[str, Any], source: str) -> Profile:
    """The built-in sections, then each registered plugin section (its dataclass's defaults where the
    table leaves it out), checked alike."""
    from nasaudit.plugins import load_plugins

    load_plugins()
    builtin = {key: value for key, value in table.items() if key not in SECTIONS}
    profile = _build(Profile, builtin, "", source)
    plugins = {name: _check(table.get(name, {}), SECTIONS.get(name), name, source) for name in SECTIONS}
    return dataclasses.replace(profile, plugins=plugins)
