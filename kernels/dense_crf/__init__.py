"""Dense-CRF energy loss over the bilateral filter of :mod:`kernels.bilateral`."""

from kernels.dense_crf.energy import energy_loss

__all__ = ["energy_loss"]
