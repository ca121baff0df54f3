"""Segmentation models (segmentation-models-pytorch) and their checkpoints."""
