"""Dense CRF over the bilateral filter of :mod:`kernels.bilateral`: the energy loss of
training and the mean-field inference of the official evaluation (pydensecrf's, without it)."""

from kernels.dense_crf.crf_reference import OFFICIAL_CRF, CRFParams
from kernels.dense_crf.energy import energy_loss
from kernels.dense_crf.inference import dense_crf

__all__ = ["OFFICIAL_CRF", "CRFParams", "dense_crf", "energy_loss"]
