"""SDI: Score Distillation via Inversion (Lukoianov et al., NeurIPS 2024, arXiv 2405.15891)."""

__version__ = "0.1.0"
