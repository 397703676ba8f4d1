"""P-DARTS: schedules, pruning and the final genotype on hand-made α, then whole tiny searches
(stages, frozen warm-up, determinism, resume after a kill, poisoned data, the victim file)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import nasaudit.nas.pdarts as pdarts
from nasaudit.config import load_profile
from nasaudit.data.datasets import Split, make_dataset
from nasaudit.data.poison import apply_poison, make_poison
from nasaudit.errors import NasauditError
from nasaudit.nas import NAS, SearchContext, run_search
from nasaudit.nas.pdarts import (
    check_config,
    final_cells,
    prune,
    skip_dropout,
    skip_dropout_rates,
    split_search_data,
)
from nasaudit.spaces.darts import CELL_TYPES, EDGES, PRIMITIVES, Genotype
from nasaudit.victim import read_victim

PAPER = load_profile("paper")
SMOKE = load_profile("smoke")
TINY_CFG = dataclasses.replace(
    SMOKE.pdarts, channels=2, layers=[3, 3, 4], epochs=2, warmup_epochs=1, batch_size=8, eval_epochs=1
)
TINY = dataclasses.replace(SMOKE, pdarts=TINY_CFG)
CPU = torch.device("cpu")


def _tiny_data():
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        return Split(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 4)

    return make_dataset("tiny", split(16), split(8), ("a", "b", "c", "d"))


def _search(data, out, seed=0):
    return NAS.get("pdarts")(data, seed, SearchContext(TINY, CPU, out, progress=False))


def _epochs(out) -> list[dict]:
    """The per-epoch log without wall times (which legitimately differ between runs)."""
    log = json.loads((out / pdarts.LOG).read_text())
    return [{k: v for k, v in e.items() if k != "elapsed"} for e in log["epochs"]]


def _alphas(out) -> dict[str, np.ndarray]:
    with np.load(out / pdarts.ALPHAS, allow_pickle=False) as f:
        return dict(f)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One tiny search through run_search, recording α and the weights around every epoch."""
    data, out = _tiny_data(), tmp_path_factory.mktemp("pdarts")
    real, seen = pdarts.search_epoch, []

    def recording(model, *args, **kwargs):
        before = [a.detach().clone() for a in model.arch_parameters()]
        weights = [w.detach().clone() for w in model.weight_parameters()]
        metrics = real(model, *args, **kwargs)
        arch_moved = [not torch.equal(b, a) for b, a in zip(before, model.arch_parameters(), strict=True)]
        weights_moved = any(
            not torch.equal(b, w) for b, w in zip(weights, model.weight_parameters(), strict=True)
        )
        seen.append((kwargs["stage"], kwargs["epoch"], kwargs["train_arch"], arch_moved, weights_moved))
        return metrics

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pdarts, "search_epoch", recording)
        context = SearchContext(TINY, CPU, out, progress=False)
        record = run_search("pdarts", data, 0, context, {"dataset": "tiny", "poison": None})
    return data, out, record, seen


# --- schedules, data split, configuration -------------------------------------------------------------


def test_skip_dropout_decays_as_the_official_search() -> None:
    cfg = PAPER.pdarts  # as their run_search.sh passes it, for CIFAR-10 and CIFAR-100 alike
    assert skip_dropout_rates(cfg, "cifar10") == skip_dropout_rates(cfg, "cifar100") == [0.1, 0.4, 0.7]
    paper_text = dataclasses.replace(
        cfg, skip_dropout=[0.0, 0.4, 0.7], skip_dropout_by_dataset={"cifar100": [0.1, 0.2, 0.3]}
    )
    assert skip_dropout_rates(paper_text, "cifar100") == [0.1, 0.2, 0.3]  # the P-DARTS paper's values
    assert skip_dropout(0.4, 0, cfg) == pytest.approx(0.4 * 24 / 25)  # warm-up: linear towards 0
    assert skip_dropout(0.4, 9, cfg) == pytest.approx(0.4 * 15 / 25)
    assert skip_dropout(0.4, 10, cfg) == pytest.approx(0.4)  # α starts training: restart, then exp decay
    assert skip_dropout(0.4, 15, cfg) == pytest.approx(0.4 * math.exp(-1.0))
    assert skip_dropout(0.0, 20, cfg) == 0.0


def test_paper_values() -> None:
    c = PAPER.pdarts
    assert (c.channels, c.layers, c.keep_ops, c.epochs, c.warmup_epochs) == (
        16,
        [5, 11, 17],
        [5, 3, 1],
        25,
        10,
    )
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.grad_clip) == (96, 0.025, 0.9, 3e-4, 5.0)
    assert (c.arch_lr, c.arch_betas, c.arch_weight_decay, c.max_skips) == (6e-4, [0.5, 0.999], 1e-3, 2)
    assert (c.augment.crop_padding, c.augment.flip, c.augment.cutout, c.train_portion) == (4, True, 0, 0.5)


def test_search_halves_are_disjoint_seeded_and_cover_the_split() -> None:
    train = _tiny_data().train
    tagged = Split(train.images, np.arange(len(train)))  # labels = sample ids
    a, b = split_search_data(tagged, 0.5, seed=0)
    assert len(a) == len(b) == 8 and sorted([*a.labels, *b.labels]) == list(range(16))
    assert np.array_equal(split_search_data(tagged, 0.5, seed=0)[0].labels, a.labels)
    assert not np.array_equal(split_search_data(tagged, 0.5, seed=1)[0].labels, a.labels)
    assert np.array_equal(a.images, train.images[a.labels])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"keep_ops": [5, 3, 2]}, "end at 1"),
        ({"keep_ops": [5, 1]}, "one entry per stage"),
        ({"keep_ops": [6, 2, 1]}, "≥ 3 candidates"),
        ({"warmup_epochs": 3}, "warmup_epochs ≤ epochs"),
        ({"train_portion": 0.01}, "empty half"),
    ],
)
def test_bad_sections_are_one_line_errors(change, message) -> None:
    with pytest.raises(NasauditError, match=message):
        check_config(dataclasses.replace(TINY_CFG, **change), _tiny_data())


# --- pruning and the final genotype on hand-made α ----------------------------------------------------


def _weights(table: dict[int, dict[str, float]], fill: float = 0.01) -> np.ndarray:
    w = np.full((len(EDGES), len(PRIMITIVES)), fill)
    for edge, ops in table.items():
        for op, value in ops.items():
            w[edge, PRIMITIVES.index(op)] = value
    return w


def test_prune_keeps_the_strongest_and_drops_none_in_the_final_stage() -> None:
    row = _weights({0: {"none": 0.5, "sep_conv_3x3": 0.2, "skip_connect": 0.15, "max_pool_3x3": 0.1}})[:1]
    everything = [list(PRIMITIVES)]
    assert prune(row, everything, 3, final=False) == [["none", "skip_connect", "sep_conv_3x3"]]
    assert prune(row, everything, 2, final=False) == [["none", "sep_conv_3x3"]]
    assert prune(row, [["none", "skip_connect", "max_pool_3x3"]], 1, final=True) == [["skip_connect"]]
    assert prune(row, [["none", "skip_connect", "sep_conv_3x3"]], 1, final=True) == [["sep_conv_3x3"]]


def test_genotype_from_hand_made_alpha_ignores_none_and_keeps_two_edges_per_node() -> None:
    normal = _weights(
        {
            0: {"none": 0.6, "sep_conv_3x3": 0.3},  # 'none' strongest: the best real op still counts
            1: {"max_pool_3x3": 0.4},
            2: {"dil_conv_3x3": 0.5},
            3: {"none": 0.9, "avg_pool_3x3": 0.05},  # only 'none' is strong: edge dropped
            4: {"sep_conv_5x5": 0.3},
            7: {"skip_connect": 0.6},
            8: {"dil_conv_5x5": 0.7, "sep_conv_3x3": 0.3},
            10: {"avg_pool_3x3": 0.2},
            13: {"sep_conv_3x3": 0.25},
        }
    )
    everything = [list(PRIMITIVES)] * len(EDGES)
    genotype, plain, replaced = final_cells(
        {"normal": normal, "reduce": normal}, {"normal": everything, "reduce": everything}, max_skips=2
    )
    expected = (
        ("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_3x3", 0), ("sep_conv_5x5", 2),
        ("skip_connect", 2), ("dil_conv_5x5", 3), ("avg_pool_3x3", 1), ("sep_conv_3x3", 4),
    )  # fmt: skip
    assert (
        genotype.normal == expected and genotype.reduce == expected and plain == genotype and replaced == []
    )
    # an op that is no longer a candidate on its edge is never picked
    pruned = [list(PRIMITIVES)] * len(EDGES)
    pruned[8] = ["none", "sep_conv_3x3"]
    genotype, _, _ = final_cells(
        {"normal": normal, "reduce": normal}, {"normal": pruned, "reduce": pruned}, 2
    )
    assert ("dil_conv_5x5", 3) not in genotype.normal and ("sep_conv_3x3", 3) in genotype.normal


def test_skip_limit_replaces_the_weakest_skips_and_rederives_the_cell() -> None:
    skip, sep = {}, {}
    for edge, (s, c) in {0: (0.9, 0.05), 1: (0.8, 0.05), 2: (0.7, 0.2), 3: (0.6, 0.1), 4: (0.1, 0.5),
                         5: (0.5, 0.3), 6: (0.4, 0.28), 7: (0.05, 0.35), 8: (0.05, 0.01), 9: (0.3, 0.25),
                         10: (0.2, 0.1), 11: (0.02, 0.15)}.items():  # fmt: skip
        skip[edge], sep[edge] = s, c
    weights = _weights({e: {"skip_connect": skip[e], "sep_conv_3x3": sep[e], "none": 0.05} for e in skip})
    candidates = [["none", "skip_connect", "sep_conv_3x3"]] * len(EDGES)
    genotype, plain, replaced = final_cells(
        {"normal": weights, "reduce": weights}, {"normal": candidates, "reduce": candidates}, max_skips=2
    )
    assert [op for op, _ in plain.normal].count("skip_connect") == 8
    assert replaced == [10, 9, 6, 5, 3, 2]  # weakest selected skip first; the cell is re-derived each time
    assert genotype.normal == (
        ("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
    )  # fmt: skip
    assert genotype.reduce == plain.reduce  # the limit applies to the normal cell only
    unlimited, _, none_replaced = final_cells(
        {"normal": weights, "reduce": weights}, {"normal": candidates, "reduce": candidates}, max_skips=8
    )
    assert unlimited == plain and none_replaced == []


# --- whole searches -------------------------------------------------------------------------------------


def test_stages_shrink_the_candidates_8_5_3_1(searched) -> None:
    _, out, record, _ = searched
    log = json.loads((out / pdarts.LOG).read_text())
    for stage, (before, after) in enumerate([(8, 5), (5, 3), (3, 1)]):
        entry = log["stages"][stage]
        assert entry["layers"] == TINY_CFG.layers[stage]
        for t in CELL_TYPES:
            assert [len(c) for c in entry["candidates"][t]] == [before] * len(EDGES)
            assert [len(c) for c in entry["kept"][t]] == [after] * len(EDGES)
            assert all(
                set(k) <= set(c) for k, c in zip(entry["kept"][t], entry["candidates"][t], strict=True)
            )
            if stage + 1 < 3:
                assert log["stages"][stage + 1]["candidates"][t] == entry["kept"][t]
    assert all("none" not in k for t in CELL_TYPES for k in log["stages"][2]["kept"][t])
    alphas = _alphas(out)
    for stage, count in enumerate([8, 5, 3]):
        assert (alphas[f"stage{stage}_active_normal"].sum(1) == count).all()
        np.testing.assert_allclose(alphas[f"stage{stage}_weights_reduce"].sum(1), 1.0, rtol=1e-5)
    genotype = Genotype.from_json(record["architecture"])
    assert [op for op, _ in genotype.normal].count("skip_connect") <= TINY_CFG.max_skips
    assert "none" not in [op for op, _ in genotype.normal + genotype.reduce]
    assert (out / "architecture.json").is_file() and not (out / pdarts.CHECKPOINT).exists()


def test_alpha_is_frozen_during_warm_up_and_trained_after(searched) -> None:
    _, _, _, seen = searched
    assert [(s, e, arch) for s, e, arch, _, _ in seen] == [
        (s, e, e >= TINY_CFG.warmup_epochs) for s in range(3) for e in range(TINY_CFG.epochs)
    ]
    for _, _, train_arch, arch_moved, weights_moved in seen:
        assert weights_moved
        assert arch_moved == [train_arch, train_arch]  # α_normal and α_reduce


def test_log_describes_every_epoch(searched) -> None:
    data, out, _, _ = searched
    log = json.loads((out / pdarts.LOG).read_text())
    assert log["train_sha256"] == data.train.sha256 and (log["weight_half"], log["arch_half"]) == (8, 8)
    for e in log["epochs"]:
        assert e["train_loss"] > 0 and (e["arch_loss"] is None) == (not e["train_arch"])
        assert set(e["alpha_entropy"]) == set(CELL_TYPES) and Genotype.from_json(e["genotype"])
        assert ("val_acc" in e) == (e["epoch"] == TINY_CFG.epochs - 1)
    first_arch = next(e for e in log["epochs"] if e["train_arch"])
    assert first_arch["skip_dropout"] == skip_dropout_rates(TINY_CFG, "tiny")[first_arch["stage"]]
    assert log["final"]["genotype"] == json.loads((out / "architecture.json").read_text())["architecture"]


def test_victim_is_the_last_stage_supernet(searched) -> None:
    data, out, _, _ = searched
    victim = read_victim(out / pdarts.VICTIM, data)
    assert victim.kind == "darts_supernet" and victim.spec["kwargs"]["layers"] == TINY_CFG.layers[-1]
    net = victim.model
    assert all(len(edge.ops) == 3 for cell in net.cells for edge in cell.edges)
    alphas = _alphas(out)
    for t in CELL_TYPES:
        np.testing.assert_array_equal(net.alpha(t).detach().numpy(), alphas[f"stage2_alpha_{t}"])


def test_same_seed_same_search_other_seed_differs(searched, tmp_path, monkeypatch) -> None:
    data, out, record, _ = searched
    assert _search(data, tmp_path / "again") == record["architecture"]
    assert _epochs(tmp_path / "again") == _epochs(out)
    again = _alphas(tmp_path / "again")
    assert all(np.array_equal(v, again[k]) for k, v in _alphas(out).items())

    real = pdarts.search_epoch

    def first_epoch_only(*args, **kwargs):
        if kwargs["epoch"] > 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pdarts, "search_epoch", first_epoch_only)
    with pytest.raises(KeyboardInterrupt):
        _search(data, tmp_path / "seed1", seed=1)
    assert _epochs(tmp_path / "seed1")[0]["train_loss"] != _epochs(out)[0]["train_loss"]


def test_killed_search_resumes_to_the_uninterrupted_result(searched, tmp_path, monkeypatch) -> None:
    data, out, record, _ = searched
    real = pdarts.search_epoch

    def dies_at(stage, epoch):
        def run(*args, **kwargs):
            if (kwargs["stage"], kwargs["epoch"]) == (stage, epoch):
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return run

    job = tmp_path / "job"
    for stage, epoch in [(1, 0), (2, 1)]:  # at a stage boundary, then inside a stage
        monkeypatch.setattr(pdarts, "search_epoch", dies_at(stage, epoch))
        with pytest.raises(KeyboardInterrupt):
            _search(data, job)
        assert (job / pdarts.CHECKPOINT).is_file() and not (job / pdarts.RESULT).exists()
    with pytest.raises(NasauditError, match=r"pdarts_checkpoint\.pt: made by another run \(its seed differs"):
        _search(data, job, seed=3)
    monkeypatch.setattr(pdarts, "search_epoch", real)
    assert _search(data, job) == record["architecture"]
    assert _epochs(job) == _epochs(out)
    resumed = _alphas(job)
    assert all(np.array_equal(v, resumed[k]) for k, v in _alphas(out).items())
    monkeypatch.setattr(pdarts, "search_epoch", lambda *a, **k: pytest.fail("re-ran a finished search"))
    assert _search(data, job) == record["architecture"]


def test_search_reads_the_poisoned_samples(searched, tmp_path, monkeypatch) -> None:
    data, out, _, _ = searched
    everything = np.arange(len(data.train))
    poison = make_poison("rlf", data, 0, everything, labels=(data.train.labels + 1) % 4)
    poisoned = apply_poison(poison, data)
    real = pdarts.search_epoch

    def stage_0_only(*args, **kwargs):
        if kwargs["stage"] > 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pdarts, "search_epoch", stage_0_only)
    with pytest.raises(KeyboardInterrupt):
        _search(poisoned, tmp_path)
    log = json.loads((tmp_path / pdarts.LOG).read_text())
    assert log["train_sha256"] == poisoned.train.sha256 != data.train.sha256
    clean, dirty = _epochs(out)[1], log["epochs"][1]
    assert dirty["train_arch"] and dirty["arch_loss"] != clean["arch_loss"]
    assert dirty["val_loss"] != clean["val_loss"]
