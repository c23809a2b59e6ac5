"""Tomography: darks, flats and projections -> a reconstructed, denoised, segmented volume."""

from .params import PaganinParams, PipelineParams
from .technique import TomoTechnique

__all__ = ["PaganinParams", "PipelineParams", "TomoTechnique"]
