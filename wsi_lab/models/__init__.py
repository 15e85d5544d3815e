"""Models over tiles and slides (PyTorch): the workshop ``VAE``, ``TileClassifier`` presets,
``AttentionMIL``, ``SegmentationModel`` (DeepLabV3 / U-Net), the encoder registry, and checkpoints that rebuild themselves (:func:`load`).

Importing this package is light; torch loads when a model class or function is first used.
"""

from __future__ import annotations

from wsi_lab._lazy import lazy_exports

_NAMES = {
    "VAE": "wsi_lab.models.vae", "vae_loss": "wsi_lab.models.vae",
    "TileClassifier": "wsi_lab.models.classifier", "SmallCNN": "wsi_lab.models.classifier",
    "AttentionMIL": "wsi_lab.models.mil", "sample_bag": "wsi_lab.models.mil",
    "ENCODERS": "wsi_lab.models.encoders", "EncoderInfo": "wsi_lab.models.encoders",
    "encoder_info": "wsi_lab.models.encoders", "build_encoder": "wsi_lab.models.encoders",
    "build_model": "wsi_lab.models.checkpoint", "save_checkpoint": "wsi_lab.models.checkpoint",
    "read_checkpoint": "wsi_lab.models.checkpoint", "load": "wsi_lab.models.checkpoint",
    "SegmentationModel": "wsi_lab.models.segmentation", "UNet": "wsi_lab.models.segmentation",
    "load_segmentation_weights": "wsi_lab.models.segmentation",
    "load_weights": "wsi_lab.models.weights", "latent_table": "wsi_lab.models.latents",
}

__all__, __getattr__, __dir__ = lazy_exports("wsi_lab.models", _NAMES)
