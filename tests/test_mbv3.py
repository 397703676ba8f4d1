"""The OFA MobileNetV3 space: encoding, subnet extraction, FLOPs, checkpoints, shrinking, retraining."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import nasaudit.spaces.mbv3.shrink as shrink_module
from nasaudit.config import load_profile
from nasaudit.data.datasets import Split, make_dataset
from nasaudit.data.device import DeviceData
from nasaudit.errors import NasauditError
from nasaudit.io import save_torch
from nasaudit.models import MODELS, load_architecture, train_config
from nasaudit.spaces.mbv3 import (
    N_VARS,
    FlopsCounter,
    MBV3Arch,
    MBV3SuperNet,
    channel_plan,
    count_flops,
    count_params,
    decode,
    encode,
    extreme_arch,
    initial_archs,
    load_supernet,
    random_arch,
    retrain_network,
    save_supernet,
    train_supernet,
)
from nasaudit.spaces.mbv3.space import make_divisible
from nasaudit.spaces.mbv3.supernet import ofa_key

PROFILE = load_profile("smoke")
PLAN = channel_plan(0.25)
RES = [32, 36, 40]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def supernet() -> MBV3SuperNet:
    """A supernet whose BN statistics and kernel transforms are far from their initial values."""
    torch.manual_seed(0)
    net = MBV3SuperNet(PLAN, 10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.05 * torch.randn_like(p))
    return net.eval()


# --- channel plan and encoding ------------------------------------------------------------------------


def test_channel_plan_is_ofa_mobilenetv3() -> None:
    assert make_divisible(16 * 1.2) == 24 and make_divisible(112 * 1.2) == 136 and make_divisible(10) == 16
    p10, p12 = channel_plan(1.0), channel_plan(1.2)
    assert [s.width for s in p10.stages] == [24, 40, 80, 112, 160] and p10.final_expand == 960
    assert [s.width for s in p12.stages] == [32, 48, 96, 136, 192] and p12.feature_mix == 1536
    assert [s.stride for s in p10.stages] == [2, 2, 2, 1, 2] and [s.se for s in p10.stages] == [0, 1, 0, 1, 1]
    assert p10.mid_channels(0, 0, 6) == 96 and p10.mid_channels(0, 1, 3) == 72  # 16·6, then 24·3
    with pytest.raises(NasauditError):
        channel_plan(0.0)


def test_encoding_round_trip_and_layout() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = random_arch(rng, RES)
        x = encode(arch, RES)
        assert x.shape == (N_VARS,) == (46,) and decode(x, RES) == arch
        assert MBV3Arch.from_json(json.loads(json.dumps(arch.to_json()))) == arch
    arch = MBV3Arch(36, (2, 3, 4, 2, 3), (7,) * 20, (6,) * 20)
    x = encode(arch, RES)
    assert (
        x[0] == 0 and list(x[1:5]) == [2, 2, 0, 0] and list(x[5:9]) == [2, 2, 0, 0]
    )  # stage 0: 2 layers run
    assert x[9] == 1 and x[18] == 2 and x[45] == 1
    assert arch.to_json()["kernels"][0] == [7, 7] and len(arch.active_layers()) == 14


def test_skipped_layers_do_not_change_the_architecture() -> None:
    a = MBV3Arch(32, (2,) * 5, (7,) * 20, (6,) * 20)
    b = MBV3Arch(32, (2,) * 5, (7, 7, 5, 3) * 5, (6, 6, 3, 4) * 5)
    assert a == b and hash(a) == hash(b)
    x = encode(a, RES)
    x[3] = 2  # a skipped layer's kernel index: whatever the search writes there
    assert decode(x, RES) == a


def test_nsganetv2_subnet_format_is_read() -> None:
    data = {
        "r": 40,
        "d": [2, 3, 2, 4, 2],
        "ks": [3, 5] + [7] * 3 + [3] * 2 + [5] * 4 + [3] * 2,
        "e": [6] * 13,
    }
    arch = MBV3Arch.from_json(data)
    assert arch.depths == (2, 3, 2, 4, 2) and arch.kernels[4:7] == (7, 7, 7) and arch.resolution == 40


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros(45, dtype=np.int64), "46 integers"),
        (np.zeros(46), "46 integers"),
        (np.r_[np.full(45, 3), 0], "variable 0 is 3, outside 0..2"),
        (np.r_[np.zeros(45, dtype=np.int64), 3], "variable 45 is 3, outside 0..2"),
    ],
)
def test_invalid_encodings_are_one_line_errors(x, match) -> None:
    with pytest.raises(NasauditError, match=match) as exc:
        decode(x, RES)
    _one_line(exc)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"resolution": 32, "depths": [2] * 5, "kernels": [[3, 3]] * 5}, "missing key 'expands'"),
        (
            {"resolution": 32, "depths": [2] * 5, "kernels": [[3, 3]] * 5, "expands": [[3, 3]] * 5, "x": 1},
            "unknown",
        ),
        ({"resolution": 32, "depths": [5] * 5, "kernels": [[3] * 5] * 5, "expands": [[3] * 5] * 5}, "depths"),
        (
            {"resolution": 32, "depths": [2] * 5, "kernels": [[3, 4]] * 5, "expands": [[3, 3]] * 5},
            "one of 3, 5, 7",
        ),
        (
            {"resolution": 32, "depths": [2] * 5, "kernels": [[3]] * 5, "expands": [[3, 3]] * 5},
            r"kernels\[0\]",
        ),
        ({"resolution": 16, "depths": [2] * 5, "kernels": [[3, 3]] * 5, "expands": [[3, 3]] * 5}, "≥ 32"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_architectures_are_one_line_errors(data, match) -> None:
    with pytest.raises(NasauditError, match=match) as exc:
        MBV3Arch.from_json(data)
    _one_line(exc)


def test_resolution_outside_the_searched_ones_is_an_error() -> None:
    with pytest.raises(NasauditError, match="not one of the searched resolutions") as exc:
        encode(extreme_arch([48], largest=True), RES)
    _one_line(exc)


def test_sampler_is_seeded_and_initial_design_has_the_extremes() -> None:
    a = [random_arch(np.random.default_rng(3), RES) for _ in range(2)]
    assert a[0] == a[1] and random_arch(np.random.default_rng(4), RES) != a[0]
    archs = initial_archs(6, np.random.default_rng(0), RES)
    assert (
        archs[0] == extreme_arch(RES, False) and archs[1] == extreme_arch(RES, True) and len(set(archs)) == 6
    )


# --- supernet and extraction ----------------------------------------------------------------------


def _archs() -> list[MBV3Arch]:
    rng = np.random.default_rng(1)
    return [extreme_arch(RES, False), extreme_arch(RES, True)] + [random_arch(rng, RES) for _ in range(4)]


@pytest.mark.parametrize("index", range(6))
def test_extracted_subnet_computes_what_the_supernet_computes(supernet, index) -> None:
    arch = _archs()[index]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(index))
    supernet.set_active(arch)
    with torch.no_grad():
        expected = supernet(x)
        sub = supernet.extract(arch).eval()
        got = sub(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) == count_params(arch, PLAN, 10)
    assert sub.state_dict()["stem.conv.weight"].data_ptr() != supernet.stem.conv.weight.data_ptr()  # a copy


def test_smaller_kernels_are_transformed_centre_crops(supernet) -> None:
    block = supernet.blocks[1]
    w7 = block.depthwise.conv.weight[:8]
    assert torch.equal(block.kernel(7, 8), w7)
    centre = w7[:, :, 1:6, 1:6].reshape(8, 1, 25)
    expected5 = (centre @ block.kernel_transforms["7to5"].T).reshape(8, 1, 5, 5)
    assert torch.allclose(block.kernel(5, 8), expected5)
    expected3 = (expected5[:, :, 1:4, 1:4].reshape(8, 1, 9) @ block.kernel_transforms["5to3"].T).reshape(
        8, 1, 3, 3
    )
    assert torch.allclose(block.kernel(3, 8), expected3)


def test_channel_sorting_keeps_the_full_network_and_protected_channel_sets() -> None:
    torch.manual_seed(1)
    net = MBV3SuperNet(PLAN, 10).eval()
    full = extreme_arch([32], largest=True)
    x = torch.randn(2, 3, 32, 32)
    net.set_active(full)
    with torch.no_grad():
        before = net(x)
        block = net.blocks[2]
        kept = set(block.project.conv.weight[0, : block.mids[4], 0, 0].tolist())
        net.sort_channels([4, 6])  # the e=4 channels keep their set, only their order changes
        assert set(block.project.conv.weight[0, : block.mids[4], 0, 0].tolist()) == kept
        assert torch.allclose(net(x), before, atol=1e-5)
        net.sort_channels([6])
        assert set(block.project.conv.weight[0, : block.mids[4], 0, 0].tolist()) != kept
        assert torch.allclose(net(x), before, atol=1e-5)
    importance = block.project.conv.weight.abs().sum((0, 2, 3))
    assert bool((importance[:-1] >= importance[1:]).all())


# --- FLOPs and size ------------------------------------------------------------------------------------


def test_flops_table_equals_measuring_the_whole_network(supernet) -> None:
    counter = FlopsCounter(PLAN, 10)
    for arch in _archs():
        net = supernet.extract(arch)
        assert counter(arch) == count_flops(net, (1, 3, arch.resolution, arch.resolution)) > 0


def test_flops_grow_with_depth_width_kernel_and_resolution() -> None:
    counter = FlopsCounter(PLAN, 10)
    base = MBV3Arch(32, (3,) * 5, (5,) * 20, (4,) * 20)

    def vary(**kwargs) -> MBV3Arch:
        return dataclasses.replace(base, **kwargs)

    for stage in range(5):
        deeper = list(base.depths)
        deeper[stage] = 4
        assert counter(vary(depths=tuple(deeper))) > counter(base)
    for layer in (0, 5, 18):
        wider, bigger = list(base.expands), list(base.kernels)
        wider[layer], bigger[layer] = 6, 7
        assert counter(vary(expands=tuple(wider))) > counter(base) < counter(vary(kernels=tuple(bigger)))
    assert counter(vary(resolution=32)) < counter(vary(resolution=36)) < counter(vary(resolution=40))
    assert count_params(vary(expands=(6,) * 20), PLAN, 10) > count_params(base, PLAN, 10)


# --- checkpoints ---------------------------------------------------------------------------------------


def _as_ofa(key: str) -> str:
    """Our key in OFA's naming (the inverse of ofa_key), written independently for the test."""
    rules = [
        (r"stem\.(conv|bn)\.(\w+)", r"first_conv.\1.\2"),
        (r"blocks\.0\.depthwise\.(\w+)\.(\w+)", r"blocks.0.mobile_inverted_conv.depth_conv.\1.\2"),
        (r"blocks\.0\.project\.(\w+)\.(\w+)", r"blocks.0.mobile_inverted_conv.point_linear.\1.\2"),
        (r"blocks\.(\d+)\.expand\.(\w+)\.(\w+)", r"blocks.\1.conv.inverted_bottleneck.\2.\2.\3"),
        (r"blocks\.(\d+)\.kernel_transforms\.(\w+)", r"blocks.\1.conv.depth_conv.conv.\2_matrix"),
        (r"blocks\.(\d+)\.depthwise\.(\w+)\.(\w+)", r"blocks.\1.conv.depth_conv.\2.\2.\3"),
        (r"blocks\.(\d+)\.se\.(\w+)\.(\w+)", r"blocks.\1.conv.depth_conv.se.fc.\2.\3"),
        (r"blocks\.(\d+)\.project\.(\w+)\.(\w+)", r"blocks.\1.conv.point_linear.\2.\2.\3"),
        (r"head\.final_expand\.(\w+)\.(\w+)", r"final_expand_layer.\1.\2"),
        (r"head\.feature_mix\.conv\.(\w+)", r"feature_mix_layer.conv.\1"),
        (r"head\.classifier\.(\w+)", r"classifier.linear.\1"),
    ]
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    raise AssertionError(key)


def test_ofa_checkpoint_keys_map_onto_ours(tmp_path, supernet) -> None:
    assert ofa_key("blocks.5.conv.depth_conv.conv.conv.weight") == "blocks.5.depthwise.conv.weight"
    assert (
        ofa_key("blocks.5.mobile_inverted_conv.depth_conv.conv.7to5_matrix")
        == "blocks.5.kernel_transforms.7to5"
    )
    assert ofa_key("blocks.9.conv.depth_conv.se.fc.reduce.bias") == "blocks.9.se.reduce.bias"
    assert ofa_key("something.else") is None
    ofa_state = {
        _as_ofa(k): v for k, v in supernet.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    ofa_state["classifier.linear.weight"] = torch.zeros(1000, PLAN.feature_mix)  # ImageNet's head
    ofa_state["classifier.linear.bias"] = torch.zeros(1000)
    save_torch(tmp_path / "ofa.pth", {"state_dict": ofa_state})
    torch.manual_seed(5)
    net = MBV3SuperNet(PLAN, 10)
    info = load_supernet(net, tmp_path / "ofa.pth")
    assert info == {"source": "ofa", "classifier_reset": True}
    loaded, original = net.state_dict(), supernet.state_dict()
    assert all(
        torch.equal(loaded[k], original[k]) for k in original if "classifier" not in k and "batches" not in k
    )
    assert not torch.equal(loaded["head.classifier.weight"], torch.zeros(10, PLAN.feature_mix))


def test_our_checkpoint_round_trips_and_mismatches_are_one_line(tmp_path, supernet) -> None:
    save_supernet(tmp_path / "ours.pt", supernet)
    net = MBV3SuperNet(PLAN, 10)
    assert load_supernet(net, tmp_path / "ours.pt") == {"source": "nasaudit", "classifier_reset": False}
    assert all(
        torch.equal(a, b)
        for a, b in zip(net.state_dict().values(), supernet.state_dict().values(), strict=True)
    )
    wider = MBV3SuperNet(channel_plan(0.5), 10)
    with pytest.raises(NasauditError, match=r"has shape .* check \[mbv3\] width_mult") as exc:
        load_supernet(wider, tmp_path / "ours.pt")
    _one_line(exc)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NasauditError, match="cannot read supernet weights") as exc:
        load_supernet(net, tmp_path / "junk.pt")
    _one_line(exc)
    save_torch(tmp_path / "other.pt", {"state_dict": {"fc.weight": torch.zeros(2)}})
    with pytest.raises(NasauditError, match="neither ours nor an OFA") as exc:
        load_supernet(net, tmp_path / "other.pt")
    _one_line(exc)


# --- progressive shrinking ----------------------------------------------------------------------------


def _tiny_data(n: int = 24):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    ds = make_dataset(
        "tiny", Split(images, np.arange(n) % 4), Split(images[:8], np.arange(8) % 4), tuple("abcd")
    )
    return ds, DeviceData(ds.train, ds, "cpu")


SHRINK = dataclasses.replace(
    PROFILE.nsganetv2.supernet,
    batch_size=12,
    phases=[
        dataclasses.replace(PROFILE.nsganetv2.supernet.phases[0], epochs=1),
        dataclasses.replace(PROFILE.nsganetv2.supernet.phases[-1], epochs=2),
    ],
)


def _shrink(out_dir, seed: int = 0):
    torch.manual_seed(seed)
    net = MBV3SuperNet(PLAN, 4, SHRINK.dropout)
    log = train_supernet(net, _tiny_data()[1], SHRINK, [32, 36], seed=seed, out_dir=out_dir, progress=False)
    return net, log


def test_progressive_shrinking_is_deterministic_and_resumes_exactly(tmp_path, monkeypatch) -> None:
    net_a, log_a = _shrink(tmp_path / "a")
    assert [(e["phase"], e["epoch"]) for e in log_a] == [(0, 0), (1, 0), (1, 1)]
    assert (tmp_path / "a" / "teacher.pt").is_file()
    real = shrink_module.shrink_epoch

    def dies_in_last_epoch(*args, **kwargs):
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shrink_module, "shrink_epoch", dies_in_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        _shrink(tmp_path / "b")
    monkeypatch.setattr(shrink_module, "shrink_epoch", real)
    net_b, log_b = _shrink(tmp_path / "b")
    assert [e["loss"] for e in log_b] == [e["loss"] for e in log_a]
    assert all(
        torch.equal(a, b)
        for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values(), strict=True)
    )
    _, log_c = _shrink(tmp_path / "c", seed=1)
    assert [e["loss"] for e in log_c] != [e["loss"] for e in log_a]


def test_bad_phases_are_one_line_errors(tmp_path) -> None:
    elastic_first = dataclasses.replace(SHRINK, phases=SHRINK.phases[::-1])
    with pytest.raises(NasauditError, match="must train the full") as exc:
        train_supernet(MBV3SuperNet(PLAN, 4), _tiny_data()[1], elastic_first, [32], seed=0, out_dir=tmp_path)
    _one_line(exc)
    bad = dataclasses.replace(SHRINK, phases=[dataclasses.replace(SHRINK.phases[0], kernels=[9])])
    with pytest.raises(NasauditError, match=r"kernels = \[9\]") as exc:
        train_supernet(MBV3SuperNet(PLAN, 4), _tiny_data()[1], bad, [32], seed=0, out_dir=tmp_path)
    _one_line(exc)


# --- retraining --------------------------------------------------------------------------------------------


def test_retraining_starts_from_the_inherited_weights(tmp_path, supernet) -> None:
    arch = _archs()[2]
    save_torch(tmp_path / "subnet.pt", {"state_dict": supernet.extract(arch).state_dict()})
    record = {"space": "mbv3", "architecture": {**arch.to_json(), "weights": "subnet.pt"}}
    (tmp_path / "architecture.json").write_text(json.dumps(record))
    space, loaded = load_architecture(str(tmp_path / "architecture.json"))
    assert space == "mbv3" and loaded == arch and loaded.weights == str(tmp_path / "subnet.pt")
    profile = dataclasses.replace(
        PROFILE, mbv3=dataclasses.replace(PROFILE.mbv3, width_mult=0.25, init="search")
    )
    net = MODELS.get("mbv3")(loaded, 10, profile)
    inherited = supernet.extract(arch).state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, inherited[key]) != key.startswith(
            "head.classifier."
        )  # only the head is new
    assert net.head.dropout.p == PROFILE.mbv3.dropout and net.blocks[-1].drop_connect > 0
    assert (
        train_config("mbv3", profile) is profile.mbv3_train
        and train_config("darts", profile) is profile.train
    )
    with pytest.raises(NasauditError, match="names no inherited weights") as exc:
        MODELS.get("mbv3")(arch, 10, profile)
    _one_line(exc)
    save_supernet(tmp_path / "super.pt", supernet)
    from_file = retrain_network(arch, 10, dataclasses.replace(profile.mbv3, init=str(tmp_path / "super.pt")))
    assert torch.equal(
        from_file.state_dict()["blocks.1.depthwise.conv.weight"], inherited["blocks.1.depthwise.conv.weight"]
    )
    scratch = retrain_network(arch, 10, dataclasses.replace(profile.mbv3, init="scratch"))
    assert not torch.equal(scratch.state_dict()["stem.conv.weight"], inherited["stem.conv.weight"])


def test_autoaugment_is_per_sample_seeded_and_leaves_the_global_stream_alone() -> None:
    _, data = _tiny_data(16)
    augment = dataclasses.replace(PROFILE.mbv3_train.augment, crop_padding=0, flip=False, cutout=0)
    plain = next(
        data.batches(16, seed=0, shuffle=False, augment=dataclasses.replace(augment, autoaugment=False))
    )[0]
    state = torch.random.get_rng_state()
    first = next(data.batches(16, seed=0, shuffle=False, augment=augment))[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    again = next(data.batches(16, seed=0, shuffle=False, augment=augment))[0]
    other = next(data.batches(16, seed=1, shuffle=False, augment=augment))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    changed = (first != plain).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 16  # some images are left alone: one policy draw per image
