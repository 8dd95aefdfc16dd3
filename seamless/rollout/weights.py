"""What a weight update reads from: the trainer, a saved folder, or tensors in memory.

Every source becomes buckets of (HF parameter name, full CPU tensor), so a transport can stream
them without holding the whole model twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import torch

Bucket = list[tuple[str, torch.Tensor]]
WeightSource = Union[str, Path, Mapping[str, torch.Tensor], Iterable[Bucket], Any]
"""A folder of *.safetensors, a state dict, an iterable of buckets, or an object with
`export_weights()` (the Trainer)."""


def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}; pass a folder written by Trainer.export_hf "
                                "or save_pretrained(safe_serialization=True)")
    return files


def buckets(source: WeightSource) -> Iterator[Bucket]:
    """The source's weights, bucket by bucket."""
    if hasattr(source, "export_weights"):
        yield from source.export_weights()
    elif isinstance(source, (str, Path)):
        from safetensors.torch import load_file

        for file in safetensors_files(Path(source)):
            yield list(load_file(str(file)).items())
    elif isinstance(source, Mapping):
        yield list(source.items())
    else:
        yield from source


def write_buckets(source: WeightSource, folder: Path) -> int:
    """One safetensors file per bucket in `folder`; returns the bytes of tensor data written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, bucket in enumerate(buckets(source)):
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in bucket}
        save_file(state, str(folder / f"weights-{i:05d}.safetensors"), metadata={"format": "pt"})
        written += sum(t.numel() * t.element_size() for t in state.values())
    return written
