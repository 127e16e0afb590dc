"""Datasets shipped with xlt (the CLDR emoji annotations) and their loaders."""

from controller.data.cldr import (
    DATASET_NAME,
    LABELS,
    build_cldr,
    load_manifest,
    load_split,
    parallel_pairs,
    provenance,
)

__all__ = ["DATASET_NAME", "LABELS", "build_cldr", "load_manifest", "load_split",
           "parallel_pairs", "provenance"]
