"""TileTable I/O, labels, splits and exports. Submodules load lazily; the table helpers are re-exported."""

from wsi_lab.data.table import (
    REQUIRED_COLUMNS,
    default_patient_id,
    empty_table,
    read_table,
    validate_table,
    write_table,
)

__all__ = ["REQUIRED_COLUMNS", "read_table", "write_table", "validate_table", "empty_table", "default_patient_id"]

# labels, splits, exports, TFRecord codec (light: numpy/pandas/PIL); TileDataset loads torch on first use
from wsi_lab.data.export_jpeg import export_jpeg
from wsi_lab.data.export_tfrecord import export_tfrecord
from wsi_lab.data.labels import attach_labels, labels_from_folders, read_labels
from wsi_lab.data.splits import check_no_leakage, split_by_group, split_by_patient, split_summary
from wsi_lab.data.tfrecord import TFRecordWriter, iter_tfrecord, parse_example, read_examples

__all__ += ["read_labels", "labels_from_folders", "attach_labels", "split_by_patient", "split_by_group", "check_no_leakage",
            "split_summary", "export_jpeg", "export_tfrecord", "TFRecordWriter", "iter_tfrecord", "parse_example",
            "read_examples", "TileDataset"]


def __getattr__(name: str):
    if name == "TileDataset":  # imports torch
        from wsi_lab.data.dataset import TileDataset

        return TileDataset
    raise AttributeError(f"module 'wsi_lab.data' has no attribute {name!r}")
