"""Training checkpoints as one safetensors file, written atomically.

Layout of a checkpoint file:

- tensors: any ``dict[str, Tensor]``; ``pack_training_state`` uses the keys
  ``modules/<name>/<state_dict key>``, ``optimizers/<name>/<param index>/<state key>`` (Adam: ``step``,
  ``exp_avg``, ``exp_avg_sq``) and ``rng/generator`` (the ``torch.Generator`` state, uint8);
- safetensors metadata (strings only): ``format`` (``FORMAT``), ``meta`` (the caller's meta dict as
  JSON) and ``sha256`` (a digest of every tensor's name, dtype, shape and bytes, so a flipped byte in
  the data is caught, not only a broken header).

Restoring modules, optimizers and generator from ``pack_training_state`` output resumes a run
bit-identically: Adam's moments and step counts, its hyperparameters and the noise stream all
continue where they stopped. Tensors load on the CPU and restore into modules and optimizers on any
device (optimizers place their state as they would have created it); a generator state saved on another
kind of device (CPU and CUDA streams differ) cannot continue its stream, so such a resume is
deterministic but not bit-identical (see ``restore_generator``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from sdi.io import PathLike, atomic_write_bytes

FORMAT = "sdi.checkpoint.v1"
_GENERATOR_KEY = "rng/generator"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or does not match the model being resumed."""


def _fix(path: PathLike) -> str:
    """The remedy appended to an unusable-checkpoint message when the caller knows of none better."""
    return f"delete {path} or restore it from a copy"


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over sorted (name, dtype, shape, raw bytes) of CPU tensors."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def save_checkpoint(path: PathLike, state: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors plus JSON-serialisable ``meta`` to one safetensors file, atomically."""
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"checkpoint state must map str -> Tensor; bad entries: {bad[:5]}")
    # copy=True also unties shared storage (tied weights), which safetensors refuses to save.
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from e
    header = {"format": FORMAT, "meta": meta_json, "sha256": tensor_digest(cpu)}
    return atomic_write_bytes(path, safetensors.torch.save(cpu, metadata=header))


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors byte string whose structure is already validated."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}


def load_checkpoint(path: PathLike, remedy: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; raises ``CheckpointError`` if it is unusable, ending
    with ``remedy`` (what to do, from what the caller keeps; default: delete or restore the file)."""
    path = Path(path)
    fix = remedy or _fix(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file; check the path or start a fresh run")
    data = path.read_bytes()
    try:
        tensors = safetensors.torch.load(data)
        header = _read_metadata(data)
    except Exception as e:  # safetensors raises SafetensorError, but junk headers can surface as others
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({e}); {fix}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an SDI checkpoint (format {header.get('format')!r}); {fix}")
    if header.get("sha256") != tensor_digest(tensors):
        raise CheckpointError(f"checkpoint {path} is corrupt (tensor checksum mismatch); {fix}")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({e}); {fix}") from e
    return tensors, meta


def _check_name(kind: str, name: str) -> None:
    """Names become key prefixes, so they must be non-empty and free of '/'."""
    if not name or "/" in name:
        raise ValueError(f"{kind} name {name!r} must be non-empty and contain no '/'")


def _sub_dict(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Entries of ``tensors`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def module_state(tensors: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """The ``state_dict`` of module ``name`` from ``pack_training_state`` tensors (e.g. to export a field)."""
    state = _sub_dict(tensors, f"modules/{name}/")
    if not state:
        raise CheckpointError(f"checkpoint holds no module named {name!r}; check the name")
    return state


def pack_optimizer(name: str, opt: Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (per-parameter state) and JSON meta (param_groups, scalars)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optimizers/{name}/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _match_tuples(saved: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples (Adam's ``betas``) into lists; give them back the live group's type."""
    return {k: tuple(v) if isinstance(live.get(k), tuple) and isinstance(v, list) else v for k, v in saved.items()}


def unpack_optimizer(name: str, opt: Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict:
    """Rebuild the ``state_dict`` that ``pack_optimizer`` split, for ``opt.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in _sub_dict(tensors, f"optimizers/{name}/").items():
        idx, skey = key.split("/", 1)
        state.setdefault(int(idx), {})[skey] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    live = opt.param_groups
    groups = [_match_tuples(g, live[i] if i < len(live) else {}) for i, g in enumerate(meta["param_groups"])]
    return {"state": state, "param_groups": groups}


def pack_training_state(
    modules: dict[str, nn.Module],
    optimizers: dict[str, Optimizer],
    generator: torch.Generator | None,
    step: int,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flatten modules, optimizers, the generator and the step into (tensors, meta) for ``save_checkpoint``.

    ``meta`` holds ``step``, the module and optimizer names, optimizer hyperparameters and
    ``extra`` (the caller's ``extra_meta``, e.g. the run config; must be JSON-serialisable).
    """
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        _check_name("module", name)
        tensors.update({f"modules/{name}/{k}": v for k, v in module.state_dict().items()})
    opt_meta = {}
    for name, opt in optimizers.items():
        _check_name("optimizer", name)
        opt_tensors, opt_meta[name] = pack_optimizer(name, opt)
        tensors.update(opt_tensors)
    if generator is not None:
        tensors[_GENERATOR_KEY] = generator.get_state()
    meta = {
        "step": int(step),
        "modules": sorted(modules),
        "optimizers": opt_meta,
        "has_generator": generator is not None,
        "generator_device": generator.device.type if generator is not None else None,
        "extra": extra_meta or {},
    }
    return tensors, meta


def _check_names(kind: str, saved: list[str], given: list[str]) -> None:
    """Raise ``CheckpointError`` unless the saved and given names are the same set."""
    if sorted(saved) != sorted(given):
        raise CheckpointError(
            f"checkpoint holds {kind} {sorted(saved)} but {sorted(given)} were given; resume with the same setup"
        )


def restore_training_state(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    modules: dict[str, nn.Module],
    optimizers: dict[str, Optimizer],
    generator: torch.Generator | None,
) -> int:
    """Load what ``pack_training_state`` saved into the given objects in place; returns the saved step.

    Raises ``CheckpointError`` if names, parameter shapes or the generator presence do not match.
    """
    try:
        _check_names("modules", meta["modules"], list(modules))
        _check_names("optimizers", list(meta["optimizers"]), list(optimizers))
        for name, module in modules.items():
            module.load_state_dict(_sub_dict(tensors, f"modules/{name}/"), strict=True)
        for name, opt in optimizers.items():
            opt.load_state_dict(unpack_optimizer(name, opt, tensors, meta["optimizers"][name]))
        if generator is not None:
            if _GENERATOR_KEY not in tensors:
                raise CheckpointError("checkpoint holds no generator state; pass generator=None or start fresh")
            restore_generator(generator, tensors[_GENERATOR_KEY], meta.get("generator_device", "cpu"))
        return int(meta["step"])
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError) as e:
        msg = str(e).replace("\n", " ").strip()
        raise CheckpointError(f"checkpoint does not match the model being resumed ({msg}); use the same config") from e


def restore_generator(generator: torch.Generator, state: Tensor, saved_on: str) -> None:
    """Continue the saved stream when ``generator`` is on the kind of device it was saved on; otherwise (a CPU
    checkpoint resumed on CUDA or back) seed ``generator`` from a digest of the saved state, deterministically."""
    if generator.device.type == saved_on:
        generator.set_state(state)
        return
    digest = hashlib.sha256(state.contiguous().numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little"))
