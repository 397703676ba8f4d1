"""Defenses: the defended-dataset file format, sanitisation, relabelling, denoising, Table 4's test."""

from __future__ import annotations

import dataclasses
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest
import torch

from nasaudit.attacks import AttackContext, run_attack
from nasaudit.config import load_profile
from nasaudit.data.poison import apply_poison, save_poison
from nasaudit.defenses import (
    DEFENSES,
    DefenseContext,
    apply_defended,
    load_defended,
    make_defended,
    run_defense,
    save_defended,
)
from nasaudit.defenses import relabel as relabel_module
from nasaudit.defenses.denoise import (
    denoise,
    denoise_images,
    denoising_timestep,
    import_diffusers,
    load_ddpm,
    unet_predictor,
)
from nasaudit.defenses.relabel import cluster_labels, feature_extractor, pretrained_features, relabel
from nasaudit.defenses.sanitize import keep_lowest_loss, sanitize, surrogate_losses
from nasaudit.errors import NasauditError
from nasaudit.report.tables import DESIGNS, build_table
from nasaudit.stats import Summary, welch_from_summary

# through the package's import, as the defense and the preflight use it (safetensors.torch first)
UNet2DModel, DDPMScheduler = (
    getattr(import_diffusers("the tests"), n) for n in ("UNet2DModel", "DDPMScheduler")
)


@pytest.fixture
def profile():
    return load_profile("smoke")


@pytest.fixture
def context(profile, tmp_path) -> DefenseContext:
    return DefenseContext(profile, torch.device("cpu"), tmp_path / "cache", progress=False)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def linear_alphas() -> torch.Tensor:
    """ᾱ of the paper's DDPM schedule (linear β from 1e-4 to 0.02 over 1000 steps), from diffusers."""
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    )
    return scheduler.alphas_cumprod.double()


def test_registry_holds_the_three_defenses() -> None:
    assert DEFENSES.names() == ["denoise", "relabel", "sanitize"]


# --- the file format ------------------------------------------------------------------------------


def test_each_kind_round_trips_and_applies(tiny_dataset, tmp_path) -> None:
    n = len(tiny_dataset.train)
    keep = np.array([1, 4, 7, 30], dtype=np.int64)
    labels = np.array([3, 2, 1, 0])
    images = np.full((4, 32, 32, 3), 9, dtype=np.uint8)
    for name, kwargs, kind in [
        ("s", {}, "subset"),
        ("l", {"labels": labels}, "labels"),
        ("i", {"images": images}, "images"),
    ]:
        made = make_defended("test", tiny_dataset, 3, keep, source={"attack": "rlf"}, **kwargs)
        path = save_defended(made, tmp_path / name)
        loaded = load_defended(path, tiny_dataset)
        assert loaded.kind == kind and loaded.n_input == n and loaded.source == {"attack": "rlf"}
        train = apply_defended(loaded, tiny_dataset).train
        assert len(train) == 4
        np.testing.assert_array_equal(
            train.labels, labels if kind == "labels" else tiny_dataset.train.labels[keep]
        )
        expected_images = images if kind == "images" else tiny_dataset.train.images[keep]
        np.testing.assert_array_equal(train.images, expected_images)


def test_load_rejects_other_data_and_tampering(tiny_dataset, tmp_path) -> None:
    path = save_defended(make_defended("test", tiny_dataset, 0, np.arange(10)), tmp_path / "d")
    other = tiny_dataset.with_train(
        dataclasses.replace(tiny_dataset.train, labels=tiny_dataset.train.labels[::-1])
    )
    with pytest.raises(NasauditError, match="computed on another training split"):
        load_defended(path, other)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(NasauditError, match="sha256 differs"):
        load_defended(path, tiny_dataset)
    with pytest.raises(NasauditError, match="no such defended-dataset file"):
        load_defended(tmp_path / "missing", tiny_dataset)


@pytest.mark.parametrize(
    ("keep", "kwargs", "message"),
    [
        ([3, 1], {}, "sorted without repeats"),
        ([1, 1], {}, "sorted without repeats"),
        ([0, 40], {}, "outside 0..39"),
        ([], {}, "non-empty"),
        ([0, 1], {"labels": np.array([0, 4])}, "label is outside 0..3"),
        ([0, 1], {"images": np.zeros((2, 32, 32, 3), dtype=np.float64)}, "images must be uint8 or float32"),
        (
            [0, 1],
            {"images": np.full((2, 32, 32, 3), 1.5, dtype=np.float32)},
            r"float32 images must lie in \[0, 1\]",
        ),
    ],
)
def test_invalid_defended_data_is_one_line(tiny_dataset, keep, kwargs, message) -> None:
    with pytest.raises(NasauditError, match=message) as err:
        make_defended("test", tiny_dataset, 0, np.array(keep, dtype=np.int64), **kwargs)
    assert "\n" not in str(err.value)


def test_poison_outcome_counts_what_became_of_the_poisoned_samples_per_class(
    tiny_dataset, context, tmp_path, monkeypatch
) -> None:
    """run_defense records, per class of the split the defense saw, the poisoned and clean samples it
    dropped and kept: the reference counts them one sample at a time."""
    labels = tiny_dataset.train.labels
    keep = np.array([0, 1, 2, 5, 8, 13, 21, 22, 34, 39])
    poisoned = np.array([1, 3, 5, 7, 9, 11, 13, 30, 31, 39])
    monkeypatch.setitem(
        DEFENSES._items, "fixed", lambda data, seed, ctx: make_defended("fixed", data, seed, keep)
    )
    defended = run_defense("fixed", tiny_dataset, 0, context, poisoned=poisoned)
    assert (
        run_defense("fixed", tiny_dataset, 0, context).poison_outcome is None
    )  # nothing known, nothing said
    outcome = defended.poison_outcome
    for c in ("all", *range(4)):
        members = [i for i in range(40) if c == "all" or labels[i] == c]
        counts = outcome if c == "all" else outcome["per_class"][str(c)]
        expected = {
            "samples": len(members),
            "poisoned": sum(i in poisoned for i in members),
            "poisoned_dropped": sum(i in poisoned and i not in keep for i in members),
            "poisoned_kept": sum(i in poisoned and i in keep for i in members),
            "clean_dropped": sum(i not in poisoned and i not in keep for i in members),
            "clean_kept": sum(i not in poisoned and i in keep for i in members),
        }
        assert {k: counts[k] for k in expected} == expected
    assert outcome["poisoned_kept"] == 4 and outcome["poisoned_dropped"] == 6
    manifest = load_defended(save_defended(defended, tmp_path / "d"), tiny_dataset)
    assert manifest.poison_outcome == outcome


# --- loss-based sanitisation ------------------------------------------------------------------------


def test_sanitize_keeps_exactly_the_lowest_loss_half_of_each_class(tiny_dataset, context) -> None:
    losses = np.random.default_rng(0).random(len(tiny_dataset.train))
    defended = sanitize(tiny_dataset, 0, context, losses=lambda data, seed, ctx: losses)
    labels = tiny_dataset.train.labels
    assert defended.kind == "subset"
    for c in range(4):
        members = np.flatnonzero(labels == c)
        kept = np.intersect1d(defended.keep, members)
        assert len(kept) == len(members) // 2  # 10 per class -> 5 kept
        assert (
            losses[kept].max() < np.delete(losses, kept)[labels[np.setdiff1d(np.arange(40), kept)] == c].min()
        )


def test_keep_lowest_loss_rounds_half_up_and_breaks_ties_by_index() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    losses = np.array([1.0, 1.0, 1.0, 5.0, np.nan, 3.0, 4.0, 2.0])
    # class 0: 3 samples, drop round(1.5) = 2, equal losses keep the lowest index; class 1: drop 3 (NaN first)
    np.testing.assert_array_equal(keep_lowest_loss(losses, labels, 0.5), [0, 5, 7])
    with pytest.raises(NasauditError, match="outside"):
        keep_lowest_loss(losses, labels, 1.0)


@pytest.mark.slow
def test_surrogate_losses_train_once_and_are_cached(tiny_dataset, profile, tmp_path) -> None:
    cfg = dataclasses.replace(profile.surrogate, epochs=1, batch_size=20)
    small = dataclasses.replace(profile, surrogate=cfg)
    context = DefenseContext(small, torch.device("cpu"), tmp_path, progress=False)
    first = surrogate_losses(tiny_dataset, 0, context)
    assert first.shape == (40,) and np.isfinite(first).all() and (first >= 0).all()
    (model,) = list(tmp_path.glob("sanitize/*/model.pt"))
    stamp = model.stat().st_mtime_ns
    np.testing.assert_array_equal(surrogate_losses(tiny_dataset, 0, context), first)
    assert model.stat().st_mtime_ns == stamp  # not trained again


# --- cluster relabelling ------------------------------------------------------------------------------


def test_relabel_ids_are_clusters_in_range_and_deterministic(tiny_dataset, context) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 10
    blob = np.arange(40) % 4
    features = centres[blob] + rng.normal(size=(40, 16))
    first = relabel(tiny_dataset, 7, context, features=lambda data, seed, ctx: features)
    labels = first.labels
    assert first.kind == "labels" and len(first.keep) == 40
    assert labels.min() >= 0 and labels.max() < tiny_dataset.num_classes
    # one cluster id per blob and one blob per cluster id
    assert {(b, c) for b, c in zip(blob, labels, strict=True)} == set(zip(range(4), labels[:4], strict=True))
    again = relabel(tiny_dataset, 7, context, features=lambda data, seed, ctx: features)
    np.testing.assert_array_equal(again.labels, labels)
    np.testing.assert_array_equal(cluster_labels(features, 4, 7, 2), cluster_labels(features, 4, 7, 2))


def test_pretrained_features_of_an_untrained_resnet_are_cached(tiny_dataset, context) -> None:
    first = pretrained_features(tiny_dataset, 0, context)  # smoke profile: resnet18, random init, 32×32
    assert first.shape == (40, 512) and np.isfinite(first).all()
    (cache,) = list(context.cache_dir.glob("relabel/*.npz"))
    np.testing.assert_array_equal(pretrained_features(tiny_dataset, 0, context), first)
    assert len(list(context.cache_dir.glob("relabel/*.npz"))) == 1
    assert cache.is_file()


def test_feature_extractor_errors_are_one_line(profile, monkeypatch) -> None:
    cfg = dataclasses.replace(profile.defenses.relabel, model="resnet152", weights="IMAGENET1K_V1")

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(relabel_module.torchvision.models, "get_model", offline)
    with pytest.raises(NasauditError, match="needs internet access") as err:
        feature_extractor(cfg)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    with pytest.raises(NasauditError, match=r"no \.fc classification layer"):
        feature_extractor(dataclasses.replace(cfg, model="mobilenet_v3_small", weights=""))


# --- diffusion denoising --------------------------------------------------------------------------------


def test_timestep_matches_two_sigma() -> None:
    alphas = linear_alphas()
    t = denoising_timestep(alphas, 0.1)
    assert t == 57  # t = 58 counted from 1
    ratio = ((1 - alphas) / alphas).sqrt()
    assert abs(ratio[t] - 0.2) <= abs(ratio[t - 1] - 0.2) and abs(ratio[t] - 0.2) <= abs(ratio[t + 1] - 0.2)


@pytest.mark.parametrize("store", ["float32", "uint8"])
@pytest.mark.parametrize("add_noise", [True, False])
def test_a_perfect_noise_predictor_recovers_the_clean_image(tiny_dataset, profile, add_noise, store) -> None:
    cfg = dataclasses.replace(profile.defenses.denoise, add_noise=add_noise, batch_size=64, store=store)
    alphas = linear_alphas()
    t = denoising_timestep(alphas, cfg.sigma)
    clean = torch.from_numpy(tiny_dataset.train.images).permute(0, 3, 1, 2).double() / 127.5 - 1
    seen = []

    def true_noise(x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        seen.append(timesteps)
        return (x_t.double() - alphas[t].sqrt() * clean) / (1 - alphas[t]).sqrt()

    out = denoise_images(
        tiny_dataset.train.images, true_noise, alphas, cfg, seed=0, device=torch.device("cpu")
    )
    if store == "uint8":
        np.testing.assert_array_equal(out, tiny_dataset.train.images)
    else:  # unquantised, as the authors stored theirs: [0, 1] floats
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, tiny_dataset.train.images / 255.0, atol=1e-6)
    assert (seen[0] == t).all()


def test_denoising_a_unet_keeps_shapes_and_is_independent_of_the_batch_size(tiny_dataset, profile) -> None:
    predict, alphas = unet_predictor(tiny_unet()), linear_alphas()
    images = tiny_dataset.train.images[:10]
    outs = [
        denoise_images(
            images,
            predict,
            alphas,
            dataclasses.replace(profile.defenses.denoise, batch_size=b, store=store),
            seed=3,
            device=torch.device("cpu"),
        )
        for b in (3, 10)
        for store in ("float32", "uint8")
    ]
    assert outs[0].shape == images.shape and outs[0].dtype == np.float32 and outs[1].dtype == np.uint8
    assert (
        outs[0].min() >= 0.0 and outs[0].max() <= 1.0 and len(np.unique(outs[0] * 255 % 1)) > 2
    )  # not levels
    assert np.abs(outs[1].astype(int) - np.round(outs[0].astype(np.float64) * 255)).max() <= 1
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-6)  # independent of the batch size (up to float32)
    np.testing.assert_array_equal(outs[1], outs[3])
    assert not np.array_equal(outs[1], images)


def test_float_images_of_a_defense_feed_the_search_as_their_pixel_values(tiny_dataset) -> None:
    from nasaudit.data.device import DeviceData

    floats = (tiny_dataset.train.images / 255.0).astype(np.float32)
    defended = make_defended("test", tiny_dataset, 0, np.arange(40), images=floats)
    data = apply_defended(defended, tiny_dataset)
    as_float = DeviceData(data.train, data).transform(torch.from_numpy(data.train.images))
    as_uint8 = DeviceData(tiny_dataset.train, tiny_dataset).transform(
        torch.from_numpy(tiny_dataset.train.images)
    )
    assert torch.allclose(as_float, as_uint8, atol=1e-6)


def test_denoise_defense_loads_a_saved_ddpm_and_replaces_every_image(tiny_dataset, context, tmp_path) -> None:
    folder = tmp_path / "ddpm"
    tiny_unet().save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_config(folder)
    ddpm = load_ddpm(str(folder), torch.device("cpu"))
    data = tiny_dataset.with_train(
        dataclasses.replace(
            tiny_dataset.train, images=tiny_dataset.train.images[:8], labels=tiny_dataset.train.labels[:8]
        )
    )
    defended = denoise(data, 0, context, ddpm=ddpm)
    assert defended.kind == "images" and defended.images.shape == (8, 32, 32, 3)
    assert defended.params["timestep"] == 57 and defended.params["add_noise"] is True
    np.testing.assert_array_equal(defended.keep, np.arange(8))


def test_missing_ddpm_is_one_line(tmp_path) -> None:
    with pytest.raises(NasauditError, match="cannot load the DDPM") as err:
        load_ddpm(str(tmp_path), torch.device("cpu"))
    assert "\n" not in str(err.value)


# --- Table 4's significance ----------------------------------------------------------------------------


def test_table4_is_one_sided_welch_against_the_undefended_cell_without_correction() -> None:
    """Our Table 4 from raw trials: undefended rows (defense "") are the references and not printed."""
    rows = [
        ("", "rlf", [96.2, 96.4, 96.1, 96.5]),
        ("", "clf", [97.0, 97.2, 96.9, 97.1]),
        ("", "gaussian", [97.0, 97.1, 96.8, 97.3]),
        ("sanitize", "rlf", [97.1, 97.3, 97.0, 97.2]),
        ("sanitize", "gaussian", [96.0, 96.3, 96.1, 96.2]),
        ("relabel", "rlf/clf", [97.1, 97.3, 97.0, 97.2]),
        ("denoise", "nas_gc", [97.1, 97.3, 97.0, 97.2]),
    ]
    trials = pd.DataFrame(
        [
            ("cifar10", defense, "pdarts", attack, 0.5, t, acc)
            for defense, attack, accs in rows
            for t, acc in enumerate(accs)
        ],
        columns=["dataset", "defense", "algorithm", "attack", "budget", "trial", "accuracy"],
    )
    baselines = pd.DataFrame({"dataset": ["cifar10"], "algorithm": ["pdarts"], "mean": [96.73]})
    out = build_table(trials, baselines, DESIGNS["table4"]).set_index(["defense", "attack"])
    assert sorted(out.index) == [("denoise", "nas_gc"), ("relabel", "rlf/clf"), ("sanitize", "gaussian"),
                                 ("sanitize", "rlf")]  # fmt: skip
    expected = welch_from_summary(
        Summary(97.15, np.std([97.1, 97.3, 97.0, 97.2], ddof=1), 4),
        Summary(96.3, np.std([96.2, 96.4, 96.1, 96.5], ddof=1), 4),
        "greater",
    )
    sanitize_rlf = out.loc[("sanitize", "rlf")]
    assert sanitize_rlf["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
    assert sanitize_rlf["p_adjusted"] == sanitize_rlf["p_value"]  # no multiple-testing correction
    assert sanitize_rlf["significant"] and sanitize_rlf["n"] == 4
    assert not out.loc[("sanitize", "gaussian"), "significant"]  # worse than poisoned: H1 is one-sided
    assert out.loc[("relabel", "rlf/clf"), "significant"]  # improves on RLF (not on CLF): counts
    assert np.isnan(out.loc[("denoise", "nas_gc"), "p_value"])  # no poisoned reference yet
    assert not out.loc[("denoise", "nas_gc"), "significant"]


def poison_then_sanitize(data, profile, folder, keep: np.ndarray):
    """An RLF poison file of ``data``, the poisoned data, and a defended file keeping ``keep`` of it."""
    context = AttackContext(profile=profile, device=torch.device("cpu"), cache_dir=folder)
    poison = run_attack("rlf", data, 0.5, 0, context)
    poisoned = apply_poison(poison, data)
    defended = save_defended(make_defended("sanitize", poisoned, 0, keep), folder / "sanitized")
    return save_poison(poison, folder / "rlf"), poisoned, defended


def test_search_data_applies_the_poison_then_the_defense(tiny_dataset, profile, tmp_path) -> None:
    from nasaudit.nas.base import search_data
    from nasaudit.runs import data_identity

    keep = np.arange(1, len(tiny_dataset.train), 3)
    poison_path, poisoned, defended_path = poison_then_sanitize(tiny_dataset, profile, tmp_path, keep)

    same, clean_provenance = search_data(tiny_dataset)
    assert same is tiny_dataset and clean_provenance["poison"] is None and "defense" not in clean_provenance
    data, provenance = search_data(tiny_dataset, poison_path, defended_path)
    assert np.array_equal(data.train.labels, poisoned.train.labels[keep])
    assert provenance["attack"] == "rlf" and provenance["defense"] == "sanitize"
    assert provenance["train_sha256"] == data.train.sha256 != poisoned.train.sha256
    identity = data_identity(data, provenance)
    assert identity["clean_sha256"] == tiny_dataset.train.sha256 and identity["poison_sha256"]
    assert identity["defended_sha256"] and identity != data_identity(*search_data(tiny_dataset, poison_path))
    with pytest.raises(NasauditError, match="another training split"):
        search_data(tiny_dataset, None, defended_path)  # computed on the poisoned split, not the clean


# --- CLI ----------------------------------------------------------------------------------------------------


def test_search_takes_a_defended_dataset(digits, profile, tmp_path) -> None:
    from nasaudit.cli import main

    keep = np.arange(0, len(digits.train), 2)
    poison_path, _, defended_path = poison_then_sanitize(digits, profile, tmp_path, keep)
    out = tmp_path / "search"
    argv = [
        "search",
        "--algo",
        "random",
        "--dataset",
        "digits",
        "--poison",
        str(poison_path),
        "--defense",
        str(defended_path),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    provenance = pd.read_json(out / "architecture.json", typ="series")["search_data"]
    assert provenance["n_train"] == len(keep) and provenance["defense"] == "sanitize"
    assert (
        main(
            [
                "search",
                "--algo",
                "random",
                "--dataset",
                "digits",
                "--defense",
                str(defended_path),
                "--out",
                str(tmp_path / "clean"),
            ]
        )
        == 2
    )
