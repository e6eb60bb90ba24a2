"""``torch.compile`` for radiance fields: the per-sample work of a render, compiled once per run."""

from __future__ import annotations

import torch
from torch import nn


def compile_field(field: nn.Module, **options) -> nn.Module:
    """Compile ``field.forward`` and ``field.density`` in place with ``torch.compile`` (default ``fullgraph=True``:
    a graph break is an error, and ``dynamic=True``: the number of samples changes every step). Parameters,
    ``state_dict`` and checkpoints are unchanged; ``options`` go to ``torch.compile``. Returns the field."""
    options = {"fullgraph": True, "dynamic": True, **options}
    field.forward = torch.compile(field.forward, **options)
    field.density = torch.compile(field.density, **options)
    return field
