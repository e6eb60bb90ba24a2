"""Priors: every one implements the ``Denoiser`` protocol of ``base.py``."""
