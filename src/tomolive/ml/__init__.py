"""Machine learning shared by the techniques: one 2.5D U-Net family, one tiling, one device
choice, one model store and the training-loop pieces; denoising (Noise2Inverse) and phase
segmentation are built on them.

Importing this package does not import torch; its modules do.
"""
