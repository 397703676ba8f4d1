"""Victim files: every kind round-trips, every way a file can be wrong is one line, and train jobs convert."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from nasaudit.attacks.victim import (
    VICTIMS,
    best_train_job,
    load_victim,
    mbv3_spec,
    read_victim,
    save_victim,
    supernet_spec,
    victim_from_train_job,
)
from nasaudit.cli import main
from nasaudit.config import load_profile
from nasaudit.errors import NasauditError
from nasaudit.io import write_json
from nasaudit.models import MODELS
from nasaudit.spaces.darts import EvalNetwork, SuperNet, load
from nasaudit.spaces.mbv3 import MBV3Net, channel_plan, random_arch
from nasaudit.train import train_model


def _supernet() -> tuple[SuperNet, dict]:
    kwargs = {"C": 2, "layers": 3, "num_classes": 4, "skip_dropout": 0.1}
    net = SuperNet(**kwargs)
    net.keep_ops("normal", 0, ["sep_conv_3x3", "skip_connect"])
    net.keep_ops("reduce", 5, ["max_pool_3x3"])
    with torch.no_grad():
        net.alpha_normal.normal_()
    return net, supernet_spec(kwargs, net)


def _network() -> tuple[EvalNetwork, dict]:
    spec = {"genotype": load("pdarts").to_json(), "channels": 2, "layers": 3, "auxiliary": True}
    return EvalNetwork(load("pdarts"), 2, 3, 4, auxiliary=True), spec


# A small MobileNetV3-space network above 32×32, so its forward upscales the images.
MBV3_ARCH, MBV3_PLAN = random_arch(np.random.default_rng(0), [40]), channel_plan(0.25)


def _mbv3() -> tuple[MBV3Net, dict]:
    torch.manual_seed(0)
    return MBV3Net(MBV3_ARCH, MBV3_PLAN, 4, dropout=0.2, drop_connect=0.2), mbv3_spec(MBV3_ARCH, MBV3_PLAN)


def _victims():
    yield "darts_supernet", *_supernet()
    yield "darts_network", *_network()
    yield "mbv3_network", *_mbv3()
    yield "resnet18_cifar", MODELS.get("resnet18_cifar")(None, 4, load_profile("smoke")), {}


def test_every_kind_round_trips(tmp_path, tiny_dataset) -> None:
    kinds = []
    for kind, model, spec in _victims():
        path = save_victim(
            tmp_path / f"{kind}.pt", model, kind=kind, spec=spec, dataset="tiny", num_classes=4
        )
        loaded = load_victim(path, tiny_dataset)
        assert type(loaded) is type(model) and not loaded.training
        saved, rebuilt = model.state_dict(), loaded.state_dict()
        assert saved.keys() == rebuilt.keys()
        assert all(torch.equal(saved[k], rebuilt[k]) for k in saved)
        x = torch.rand(2, 3, 32, 32)
        model.eval()
        out_a, out_b = model(x), loaded(x)
        out_a, out_b = (o[0] if isinstance(o, tuple) else o for o in (out_a, out_b))
        assert torch.equal(out_a, out_b)
        kinds.append(kind)
    assert sorted(kinds) == VICTIMS.names()


def test_supernet_candidates_survive(tmp_path, tiny_dataset) -> None:
    net, spec = _supernet()
    path = save_victim(
        tmp_path / "v.pt", net, kind="darts_supernet", spec=spec, dataset="tiny", num_classes=4
    )
    victim = read_victim(path, tiny_dataset)
    assert victim.kind == "darts_supernet"
    assert victim.model.candidates("normal")[0] == ["skip_connect", "sep_conv_3x3"]
    assert victim.model.candidates("reduce")[5] == ["max_pool_3x3"]
    assert torch.equal(victim.model.alpha_normal, net.alpha_normal)


def test_spec_that_cannot_rebuild_is_refused_at_save(tmp_path) -> None:
    net, spec = _network()
    with pytest.raises(NasauditError, match="does not rebuild the saved darts_network"):
        save_victim(tmp_path / "v.pt", net, kind="darts_network", spec={**spec, "channels": 3},
                    dataset="tiny", num_classes=4)  # fmt: skip
    with pytest.raises(NasauditError, match="unknown victim kind 'vgg'"):
        save_victim(tmp_path / "v.pt", net, kind="vgg", spec=spec, dataset="tiny", num_classes=4)
    with pytest.raises(NasauditError, match="not JSON-serialisable"):
        save_victim(
            tmp_path / "v.pt", net, kind="darts_network", spec={"x": object()}, dataset="t", num_classes=4
        )
    assert not (tmp_path / "v.pt").exists()


def test_bad_files_are_one_line_errors(tmp_path, tiny_dataset, digits) -> None:
    with pytest.raises(NasauditError, match="does not exist"):
        load_victim(tmp_path / "missing.pt", tiny_dataset)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NasauditError, match="not a readable victim file"):
        load_victim(tmp_path / "junk.pt", tiny_dataset)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(NasauditError, match="not a nasaudit-victim/1 victim file"):
        load_victim(tmp_path / "other.pt", tiny_dataset)
    net, spec = _network()
    path = save_victim(tmp_path / "v.pt", net, kind="darts_network", spec=spec, dataset="tiny", num_classes=4)
    with pytest.raises(NasauditError, match="does not match the dataset's classes") as err:
        load_victim(path, digits)
    assert "\n" not in str(err.value)
    record = torch.load(path, weights_only=True)
    torch.save({**record, "kind": "vgg"}, tmp_path / "vgg.pt")
    with pytest.raises(NasauditError, match="unknown victim kind 'vgg'"):
        load_victim(tmp_path / "vgg.pt", tiny_dataset)


def _train_job(tmp_path, tiny_dataset, name: str, seed: int, space: str = "darts"):
    profile = load_profile("smoke")
    if space == "darts":
        cfg = dataclasses.replace(profile.train, epochs=1, batch_size=20)
        description = {"space": "darts", "architecture": load("pdarts").to_json()}

        def build():
            return EvalNetwork(load("pdarts"), 2, 3, 4, auxiliary=True)
    else:
        cfg = dataclasses.replace(profile.mbv3_train, epochs=1, batch_size=20)
        arch = dataclasses.replace(MBV3_ARCH, weights="/inherited/subnet.pt")
        description = {"space": "mbv3", "architecture": arch.to_json()}

        def build():
            return _mbv3()[0]

    train_model(build, tiny_dataset, cfg, seed=seed, device=torch.device("cpu"), out_dir=tmp_path / name,
                description=description, progress=False)  # fmt: skip
    return tmp_path / name


def _same_weights(job, victim) -> bool:
    trained = torch.load(job / "model.pt", weights_only=True)
    state = victim.model.state_dict()
    return trained.keys() == state.keys() and all(torch.equal(trained[k], v) for k, v in state.items())


def test_train_job_becomes_a_darts_network_victim(tmp_path, tiny_dataset) -> None:
    job = _train_job(tmp_path, tiny_dataset, "job", 0)
    path = victim_from_train_job(job, 2, 3)
    assert path == job / "victim.pt"
    victim = read_victim(path, tiny_dataset)
    assert victim.kind == "darts_network" and victim.spec["auxiliary"] is True
    assert _same_weights(job, victim)
    with pytest.raises(NasauditError, match="channels=4, layers=3"):
        victim_from_train_job(job, 4, 3)
    with pytest.raises(NasauditError, match="not a finished training job"):
        victim_from_train_job(tmp_path / "nothing", 2, 3)
    write_json(
        tmp_path / "other" / "result.json",
        {"dataset": "tiny", "description": {"space": "nasbench", "architecture": {}}},
    )
    (tmp_path / "other" / "model.pt").write_bytes(b"")
    with pytest.raises(NasauditError, match="unknown train-job space 'nasbench'; choose one of: darts, mbv3"):
        victim_from_train_job(tmp_path / "other", 2, 3)


def test_train_job_becomes_an_mbv3_network_victim(tmp_path, tiny_dataset) -> None:
    job = _train_job(tmp_path, tiny_dataset, "job", 0, space="mbv3")
    victim = read_victim(victim_from_train_job(job, 2, 3, tmp_path / "v.pt"), tiny_dataset)  # sizes: DARTS'
    assert victim.kind == "mbv3_network" and _same_weights(job, victim)
    assert victim.spec == mbv3_spec(MBV3_ARCH, MBV3_PLAN)  # widths as trained, no inherited-weights path
    trained = _mbv3()[0]
    trained.load_state_dict(torch.load(job / "model.pt", weights_only=True))
    x = torch.rand(3, 3, 32, 32)  # the data's own size: both upscale it to the architecture's 40×40
    assert torch.equal(trained.eval()(x), victim.model(x))
    torch.save({"stem.conv.weight": torch.zeros(8, 3, 3, 3)}, job / "model.pt")
    with pytest.raises(NasauditError, match="is not a mbv3 network's state dict"):
        victim_from_train_job(job, 2, 3)


def test_best_train_job_picks_the_highest_accuracy_first_on_ties(tmp_path) -> None:
    for name, final, peak in [("a", 50.0, 90.0), ("b", 70.0, 75.0), ("c", 70.0, 75.0)]:
        log = [{"epoch": 0, "test_acc": peak}, {"epoch": 1, "test_acc": final}]
        write_json(tmp_path / name / "result.json", {"test_accuracy": final, "log": log})
    assert best_train_job([tmp_path / n for n in "abc"], "final") == tmp_path / "b"
    assert best_train_job([tmp_path / n for n in "cba"], "final") == tmp_path / "c"
    assert best_train_job([tmp_path / n for n in "cba"], "best") == tmp_path / "a"  # its best epoch: 90%
    with pytest.raises(NasauditError, match=r"no readable result\.json"):
        best_train_job([tmp_path / "a", tmp_path / "z"], "final")


def test_cli_victim_command_and_poison_errors(tmp_path, tiny_dataset, capsys) -> None:
    jobs = [_train_job(tmp_path, tiny_dataset, f"t{i}", i) for i in range(2)]
    best = max(
        jobs, key=lambda j: (json.loads((j / "result.json").read_text())["test_accuracy"], -jobs.index(j))
    )
    out = tmp_path / "victim.pt"
    argv = ["victim", "--train", *map(str, jobs), "--channels", "2", "--layers", "3", "--out", str(out)]
    assert main(argv) == 0
    assert str(best) in capsys.readouterr().out
    assert read_victim(out, tiny_dataset).kind == "darts_network"

    poison = ["poison", "--dataset", "digits", "--budget", "0.1", "--cache", str(tmp_path / "cache")]
    assert main([*poison, "--attack", "gc", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "needs a victim model: pass --victim FILE" in err and err.count("\n") == 1
    assert main([*poison, "--attack", "nas_gc", "--victim", str(out), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "does not match the dataset's classes" in err and err.count("\n") == 1
    missing = ["--victim", str(tmp_path / "no.pt"), "--out", str(tmp_path / "q")]
    assert main([*poison, "--attack", "gc", *missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("*q*"))  # refused before any work: not even the output's lock
