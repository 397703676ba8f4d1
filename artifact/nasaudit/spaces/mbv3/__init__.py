"""The OFA MobileNetV3 space NSGANetV2 searches: encoding, standalone networks, supernet, shrinking."""

from nasaudit.spaces.mbv3.network import FlopsCounter, MBV3Net, count_flops, count_params
from nasaudit.spaces.mbv3.shrink import obtain_supernet, train_supernet
from nasaudit.spaces.mbv3.space import (
    DEPTHS,
    EXPANDS,
    KERNELS,
    N_VARS,
    OFA_MBV3,
    ChannelPlan,
    MBV3Arch,
    StageSpec,
    channel_plan,
    decode,
    encode,
    extreme_arch,
    initial_archs,
    random_arch,
    upper_bounds,
)
from nasaudit.spaces.mbv3.supernet import MBV3SuperNet, load_supernet, retrain_network, save_supernet

__all__ = [
    "DEPTHS",
    "EXPANDS",
    "KERNELS",
    "N_VARS",
    "OFA_MBV3",
    "ChannelPlan",
    "FlopsCounter",
    "MBV3Arch",
    "MBV3Net",
    "MBV3SuperNet",
    "StageSpec",
    "channel_plan",
    "count_flops",
    "count_params",
    "decode",
    "encode",
    "extreme_arch",
    "initial_archs",
    "load_supernet",
    "obtain_supernet",
    "random_arch",
    "retrain_network",
    "save_supernet",
    "train_supernet",
    "upper_bounds",
]
