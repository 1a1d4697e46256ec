"""litscale: pretraining for neural-architecture research with μP++ depth transfer."""

__version__ = "0.1.0"
