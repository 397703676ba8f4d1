"""The DARTS search space: operations, genotypes, the search supernet and the evaluation network."""

from nasaudit.spaces.darts.genotype import (
    CONCAT,
    EDGE_OPS,
    EDGES,
    GENOTYPES,
    NODES,
    SAMPLINGS,
    Genotype,
    derive_genotype,
    load,
    random_genotype,
)
from nasaudit.spaces.darts.network import EvalNetwork, arch_info, count_flops, count_parameters
from nasaudit.spaces.darts.ops import OPS, PRIMITIVES
from nasaudit.spaces.darts.supernet import CELL_TYPES, MIXINGS, SuperNet

__all__ = [
    "CELL_TYPES",
    "CONCAT",
    "EDGES",
    "EDGE_OPS",
    "GENOTYPES",
    "MIXINGS",
    "NODES",
    "OPS",
    "PRIMITIVES",
    "SAMPLINGS",
    "EvalNetwork",
    "Genotype",
    "SuperNet",
    "arch_info",
    "count_flops",
    "count_parameters",
    "derive_genotype",
    "load",
    "random_genotype",
]
