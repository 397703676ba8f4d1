"""A stage's ``precision`` reaches the forward passes it names: fp32 as run, bf16 autocast when chosen.

Every nn.Linear output seen during a stage is recorded by a global forward hook; under bf16 autocast
a linear layer computes in bfloat16, in fp32 it stays float32 (on the CPU as on CUDA).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from nasaudit.config import PROFILE_DIR, load_profile
from nasaudit.data.datasets import Split, make_dataset
from nasaudit.data.device import DeviceData
from nasaudit.errors import NasauditError
from nasaudit.nas import SearchContext
from nasaudit.nas.base import NAS
from nasaudit.spaces.mbv3 import MBV3SuperNet, channel_plan
from nasaudit.spaces.mbv3.shrink import train_supernet
from nasaudit.train import train_model

from conftest import set_toml

SMOKE = load_profile("smoke")
CPU = torch.device("cpu")


@contextmanager
def linear_output_dtypes() -> Iterator[set[torch.dtype]]:
    seen: set[torch.dtype] = set()

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _data(n: int = 16):
    rng = np.random.default_rng(0)

    def split(size: int) -> Split:
        return Split(rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8), np.arange(size) % 4)

    return make_dataset("tiny", split(n), split(8), ("a", "b", "c", "d"))


EXPECTED = {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_retraining_forwards_run_in_the_recipe_precision(precision: str) -> None:
    cfg = dataclasses.replace(SMOKE.train, epochs=1, batch_size=8, precision=precision)
    build = lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))  # noqa: E731
    with linear_output_dtypes() as seen:
        result = train_model(build, _data(), cfg, seed=0, device=CPU, progress=False)
    assert seen == EXPECTED[precision]
    assert result["config"]["precision"] == precision  # recorded with the run


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pdarts_search_steps_run_in_its_precision(precision: str, tmp_path) -> None:
    cfg = dataclasses.replace(
        SMOKE.pdarts,
        channels=2,
        layers=[3, 3, 4],
        epochs=2,
        warmup_epochs=1,
        batch_size=8,
        precision=precision,
    )
    profile = dataclasses.replace(SMOKE, pdarts=cfg)
    with linear_output_dtypes() as seen:
        NAS.get("pdarts")(_data(), 0, SearchContext(profile, CPU, tmp_path, progress=False))
    assert seen == EXPECTED[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_supernet_shrinking_runs_in_its_precision(precision: str, tmp_path) -> None:
    base = SMOKE.nsganetv2.supernet
    cfg = dataclasses.replace(
        base, batch_size=8, phases=[dataclasses.replace(base.phases[0], epochs=1)], precision=precision
    )
    data = _data()
    with linear_output_dtypes() as seen:
        train_supernet(
            MBV3SuperNet(channel_plan(0.25), 4, cfg.dropout),
            DeviceData(data.train, data, CPU),
            cfg,
            [32],
            seed=0,
            out_dir=tmp_path,
            progress=False,
        )
    assert seen == EXPECTED[precision]


def test_an_unknown_precision_is_one_line_naming_the_file(tmp_path) -> None:
    text = set_toml((PROFILE_DIR / "smoke.toml").read_text(), "train", "epochs", '1\nprecision = "fp16"')
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(NasauditError, match=r"p\.toml: \[train\] precision 'fp16' is not one of: fp32, bf16"):
        load_profile(tmp_path / "p.toml")
