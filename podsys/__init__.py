"""podsys: one manifest in, a deployed and verified GPU cluster out."""

__version__ = "0.1.0"
