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
