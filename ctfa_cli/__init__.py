"""ctfa: weakly supervised semantic segmentation of remote-sensing imagery with CTFA."""

__version__ = "0.1.0"
