"""Process-group set-up for `torchrun`, the few collectives the engine needs, and what a CPU computes natively.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process.
NCCL is used with GPUs, gloo on the CPU. Only rank 0 writes files.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional

import torch
import torch.distributed as dist

from .errors import UserError


__all__ = ['DistInfo', 'init_distributed', 'resolve_device', 'all_reduce_sum', 'weights_digest', 'gather_objects',
           'cpu_bf16_native']


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
    """The device a process trains on: 'auto' (CUDA when visible), 'cpu', 'cuda' (GPU LOCAL_RANK
    under torchrun, the current GPU otherwise) or 'cuda:N' (GPU N; one process only). The chosen
    GPU becomes the current one, so CUDA RNG state and allocations follow it. Raises UserError
    for a name it does not know, a GPU that is not visible, or cuda:N under torchrun."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cpu':
        return torch.device('cpu')
    kind, _, index = name.partition(':')
    if kind != 'cuda' or (index and not index.isdigit()):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UserError(f'device {name} requested but no GPU is visible; use device=cpu')
    if index and info.distributed:
        raise UserError(f'device {name} names one GPU, but under torchrun each process takes GPU LOCAL_RANK: '
                        f'set device=cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)')
    gpu = int(index) if index else info.local_rank if info.distributed else torch.cuda.current_device()
    if gpu >= torch.cuda.device_count():
        raise UserError(f'device {name}: only {torch.cuda.device_count()} GPU(s) are visible (cuda:0 to '
                        f'cuda:{torch.cuda.device_count() - 1})')
    torch.cuda.set_device(gpu)
    return torch.device('cuda', gpu)


def init_distributed(device_name: str = 'auto', timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group that torchrun describes in the environment (if any); a collective
    that waits longer than `timeout_minutes` for another process fails instead of hanging."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ['RANK']), world_size, int(os.environ.get('LOCAL_RANK', '0')))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != 'cpu'
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group('nccl' if use_cuda else 'gloo', timeout=timedelta(minutes=timeout_minutes))
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


def cpu_bf16_native() -> Optional[bool]:
    """Whether this x86 CPU computes bf16 in hardware (the avx512_bf16 or amx_bf16 flags of
    /proc/cpuinfo); None where that cannot be read (another OS or architecture). Without them
    bf16 autocast is emulated: a 224-px recipe's test took 129 s in bf16 and 10 s in fp32 on an
    AVX2-only CPU."""
    import platform
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return None
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return None
    return 'avx512_bf16' in flags or 'amx_bf16' in flags
