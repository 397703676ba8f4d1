"""The trainer: recipe pieces, determinism, and resume-equals-uninterrupted on CPU."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

import nasaudit.train as train_module
from nasaudit.config import load_profile
from nasaudit.errors import NasauditError
from nasaudit.models import MODELS
from nasaudit.spaces.darts import load
from nasaudit.train import cosine_lr, reported_accuracy, train_model

PROFILE = load_profile("smoke")
# The paper recipe's auxiliary head and drop-path, which the smoke profile switches off
CFG = dataclasses.replace(PROFILE.train, epochs=3, batch_size=16, eval_every=1, checkpoint_every=1,
                          auxiliary_weight=0.4, drop_path=0.3)  # fmt: skip
SMALL = dataclasses.replace(
    PROFILE, train=CFG, darts_net=dataclasses.replace(PROFILE.darts_net, channels=4, layers=3)
)  # builds the auxiliary head CFG weights
CPU = torch.device("cpu")


def _build():
    return MODELS.get("darts")(load("pdarts"), 4, SMALL)


def _train(tiny_dataset, out_dir=None, seed=0):
    return train_model(_build, tiny_dataset, CFG, seed=seed, device=CPU, out_dir=out_dir, progress=False)


def test_cosine_schedule_runs_from_lr_to_lr_min() -> None:
    assert cosine_lr(CFG, 0) == CFG.lr
    cfg = dataclasses.replace(CFG, epochs=4, lr=1.0, lr_min=0.2)
    assert [round(cosine_lr(cfg, e), 4) for e in range(4)] == [1.0, 0.8828, 0.6, 0.3172]


def test_ofa_recipe_steps_the_cosine_every_batch_with_nesterov_momentum(tiny_dataset, monkeypatch) -> None:
    """OFA's run manager (NSGANetV2's fine-tune): lr = cosine at epoch + batch/batches, Nesterov SGD."""
    cfg = dataclasses.replace(CFG, epochs=2, lr=0.1, lr_min=0.0, nesterov=True, lr_per_step=True)
    seen: list[tuple[float, bool]] = []
    real = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["nesterov"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    train_model(_build, tiny_dataset, cfg, seed=0, device=CPU, progress=False)
    steps = -(-len(tiny_dataset.train) // cfg.batch_size)
    expected = [
        0.05 * (1 + math.cos(math.pi * (e * steps + b) / (2 * steps))) for e in range(2) for b in range(steps)
    ]
    assert len(seen) == 2 * steps > 2 and all(nesterov for _, nesterov in seen)
    assert [lr for lr, _ in seen] == pytest.approx(expected, rel=1e-12)
    assert seen[1][0] < seen[0][0] == cfg.lr  # within the first epoch already


def test_same_seed_same_metrics_and_another_seed_differs(tiny_dataset) -> None:
    a, b, c = _train(tiny_dataset), _train(tiny_dataset), _train(tiny_dataset, seed=1)
    assert [e["train_loss"] for e in a["log"]] == [e["train_loss"] for e in b["log"]]
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
    assert [e["train_loss"] for e in a["log"]] != [e["train_loss"] for e in c["log"]]


def test_result_records_the_run(tmp_path, tiny_dataset) -> None:
    result = _train(tiny_dataset, tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["test_accuracy"] == result["test_accuracy"] and on_disk["seed"] == 0
    assert len(on_disk["log"]) == 3 and all("test_acc" in e for e in on_disk["log"])
    assert on_disk["params"] == sum(
        p.numel() for n, p in _build().named_parameters() if not n.startswith("auxiliary_head")
    )
    assert on_disk["config"]["lr"] == CFG.lr and on_disk["manifest"]["device"] == "cpu"
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / "checkpoint.pt").exists()
    # drop-path ramps linearly from 0; the learning rate follows the cosine
    assert [e["lr"] for e in on_disk["log"]] == [cosine_lr(CFG, e) for e in range(3)]
    # the final and the best evaluated epoch's accuracy (as the authors' train_cifar.py logs it)
    accuracies = [e["test_acc"] for e in on_disk["log"]]
    assert on_disk["test_accuracy"] == accuracies[-1] == reported_accuracy(on_disk, "final")
    assert on_disk["best_test_accuracy"] == max(accuracies) == reported_accuracy(on_disk, "best")
    assert accuracies[on_disk["best_epoch"]] == max(accuracies)
    assert accuracies.index(max(accuracies)) == on_disk["best_epoch"]  # the first of equals


def test_the_best_epoch_is_among_the_evaluated_ones() -> None:
    accuracies = {1: 60.0, 2: 70.0, 4: 70.0, 5: 65.0}  # epochs 0 and 3 not evaluated
    log = [{"epoch": e, **({"test_acc": accuracies[e]} if e in accuracies else {})} for e in range(6)]
    result = {"test_accuracy": 65.0, "log": log}
    assert reported_accuracy(result, "best") == 70.0 and reported_accuracy(result, "final") == 65.0
    assert reported_accuracy({"test_accuracy": 12.5, "log": []}, "best") == 12.5  # no epoch ran
    with pytest.raises(NasauditError, match=r"unknown \[results\] accuracy 'peak'"):
        reported_accuracy(result, "peak")


def _killed_in_epoch_2(monkeypatch, dataset, out) -> None:  # type: ignore[no-untyped-def]
    """Train into ``out`` until epoch 2 raises (a kill), leaving its checkpoint; then heal training."""
    real_epoch = train_module.train_epoch

    def dies_in_epoch_2(*args, **kwargs):
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _train(dataset, out)
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)


def test_killed_run_resumes_to_the_same_metrics(tmp_path, tiny_dataset, monkeypatch) -> None:
    uninterrupted = _train(tiny_dataset)
    _killed_in_epoch_2(monkeypatch, tiny_dataset, tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "result.json").exists()
    resumed = _train(tiny_dataset, tmp_path)
    assert [e["train_loss"] for e in resumed["log"]] == [e["train_loss"] for e in uninterrupted["log"]]
    assert resumed["test_accuracy"] == uninterrupted["test_accuracy"]
    assert resumed["test_loss"] == uninterrupted["test_loss"]


def test_finished_job_is_not_recomputed(tmp_path, tiny_dataset, monkeypatch) -> None:
    first = _train(tiny_dataset, tmp_path)
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("retrained a finished job"))
    assert _train(tiny_dataset, tmp_path)["test_accuracy"] == first["test_accuracy"]


def test_weights_are_saved_before_the_finished_marker(tmp_path, tiny_dataset, monkeypatch) -> None:
    """A kill while saving the weights leaves an unfinished job that resumes, not one without weights."""
    real_save, real_write = train_module.save_torch, train_module.write_json

    def dies_saving_the_weights(path, obj):
        if path.name == "model.pt":
            raise KeyboardInterrupt
        return real_save(path, obj)

    monkeypatch.setattr(train_module, "save_torch", dies_saving_the_weights)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_dataset, tmp_path)
    assert not (tmp_path / "result.json").exists() and (tmp_path / "checkpoint.pt").is_file()

    def writes_result_last(path, obj):
        assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()
        return real_write(path, obj)

    monkeypatch.setattr(train_module, "save_torch", real_save)
    monkeypatch.setattr(train_module, "write_json", writes_result_last)
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: pytest.fail("the last epoch is saved"))
    resumed = _train(tiny_dataset, tmp_path)
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / "checkpoint.pt").exists()
    assert resumed["test_accuracy"] == _result_on_disk(tmp_path)["test_accuracy"]


def _result_on_disk(out_dir):
    return json.loads((out_dir / "result.json").read_text())


def test_result_without_weights_is_trained_again(tmp_path, tiny_dataset) -> None:
    """A folder left by the old order (result.json written, killed before model.pt) heals itself."""
    first = _train(tiny_dataset, tmp_path)
    (tmp_path / "model.pt").unlink()
    again = _train(tiny_dataset, tmp_path)
    assert (tmp_path / "model.pt").is_file() and again["test_accuracy"] == first["test_accuracy"]


def test_cached_result_of_another_run_is_refused(tmp_path, tiny_dataset) -> None:
    described = {"space": "darts", "architecture": {"normal": [1]}, "source": "a.json"}

    def train(cfg=CFG, seed=0, description=described):
        return train_model(_build, tiny_dataset, cfg, seed=seed, device=CPU, out_dir=tmp_path,
                           description=description, progress=False)  # fmt: skip

    train()
    others = {
        "seed": lambda: train(seed=1),
        "config": lambda: train(cfg=dataclasses.replace(CFG, lr=CFG.lr / 2)),
        "trained": lambda: train(description={**described, "architecture": {"normal": [2]}}),
    }
    for field, call in others.items():
        with pytest.raises(NasauditError, match=rf"result\.json: made by another run \(its {field} differs"):
            call()
    fix = re.escape("delete it to recompute, or choose another output") + "$"
    with pytest.raises(NasauditError, match=fix):
        train(seed=1)
    again = train(description={**described, "source": "elsewhere/a.json"})  # provenance only: same run
    assert again["description"]["source"] == "a.json"


def test_checkpoint_of_another_run_is_refused(tmp_path, tiny_dataset, monkeypatch) -> None:
    _killed_in_epoch_2(monkeypatch, tiny_dataset, tmp_path)
    with pytest.raises(NasauditError, match=r"checkpoint\.pt: made by another run \(its seed differs"):
        _train(tiny_dataset, tmp_path, seed=1)
    assert not (tmp_path / "result.json").exists()


def test_auxiliary_loss_is_used_only_when_weighted(tiny_dataset) -> None:
    no_aux = dataclasses.replace(CFG, epochs=1, auxiliary_weight=0.0)
    with_aux = dataclasses.replace(CFG, epochs=1)
    a = train_model(_build, tiny_dataset, no_aux, seed=0, device=CPU, progress=False)
    b = train_model(_build, tiny_dataset, with_aux, seed=0, device=CPU, progress=False)
    assert a["log"][0]["train_loss"] < b["log"][0]["train_loss"]  # the 0.4-weighted aux term adds to it


def test_resnet18_cifar_keeps_32x32_resolution() -> None:
    net = MODELS.get("resnet18_cifar")(None, 10, PROFILE)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
