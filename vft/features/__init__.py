"""Pretrained feature extractors used by the prep job: DINOv2 REPA targets, caption encoders."""
