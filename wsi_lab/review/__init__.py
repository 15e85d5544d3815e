"""Pathologist review over predictions tables (layer 6): decisions (accept/relabel tiles, sets and drawn
regions, with who and when, undo) saved as Parquet and QuPath GeoJSON, applied as the next training
table's ``label`` column; galleries of the highest/lowest-scoring tiles and of a tile's nearest neighbours
in latent or feature space. The widgets (``wsi_lab.ui.review``, ``wsi_lab.ui.explorer``) only call these."""

from wsi_lab.review.decisions import (
           ACTIONS,
           DECISION_COLUMNS,
           SOURCES,
           DecisionStore,
           apply_decisions,
           tiles_in_polygon,
)
from wsi_lab.review.explore import SlidePoints, cluster_labels, embed, points_in_region
from wsi_lab.review.galleries import NeighbourIndex, feature_columns, score_column, tile_images, top_tiles

__all__ = ["DecisionStore", "apply_decisions", "tiles_in_polygon", "DECISION_COLUMNS", "ACTIONS", "SOURCES",
           "NeighbourIndex", "feature_columns", "score_column", "tile_images", "top_tiles", "embed", "cluster_labels",
           "points_in_region", "SlidePoints"]
