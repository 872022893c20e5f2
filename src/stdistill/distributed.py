"""Process-group set-up for `torchrun`, and the few collectives the engine needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process.
NCCL is used with GPUs, gloo on the CPU. Only rank 0 writes files.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

__all__ = ['DistInfo', 'init_distributed', 'resolve_device', 'all_reduce_sum', 'weights_digest', 'gather_objects']


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ValueError('device cuda requested but no GPU is visible; use device=cpu')
        return torch.device('cuda', info.local_rank if info.distributed else torch.cuda.current_device())
    if name != 'cpu':
        raise ValueError(f"device must be auto, cuda or cpu, got {name!r}")
    return torch.device('cpu')


def init_distributed(device_name: str = 'auto') -> DistInfo:
    """Join the process group that torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ['RANK']), world_size, int(os.environ.get('LOCAL_RANK', '0')))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != 'cpu'
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group('nccl' if use_cuda else 'gloo')
    return info


def all_reduce_sum(values: List[float], device: torch.device, info: Optional[DistInfo] = None) -> List[float]:
    """Sum a few numbers over all processes (a no-op in a single process). Without `info`, an
    initialised torch.distributed process group says whether there are others."""
    distributed = info.distributed if info is not None else dist.is_available() and dist.is_initialized()
    if not distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
