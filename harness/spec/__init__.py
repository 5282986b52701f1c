"""Benchmark specs: schema, loading with inheritance, identity and the grid."""

from harness.spec.grid import Cell, canonical_json, expand_cells, resolved_dict, spec_hash
from harness.spec.load import (
    benchmarks_dir,
    find_spec_file,
    load_spec,
    name_clash,
    registered_specs,
)
from harness.spec.schema import Spec

__all__ = [
    "Cell",
    "Spec",
    "benchmarks_dir",
    "canonical_json",
    "expand_cells",
    "find_spec_file",
    "load_spec",
    "name_clash",
    "registered_specs",
    "resolved_dict",
    "spec_hash",
]
