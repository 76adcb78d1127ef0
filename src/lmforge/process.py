"""This process in a run: its place in a `torchrun` job (rank, world, device, the few collectives
the loop needs) and the Ctrl-C / SIGTERM handling that turns a signal into a checkpointed stop."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Process:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: torch.device) -> Process:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1 and not dist.is_initialized():
            # NCCL reduces CUDA tensors only; gloo the CPU ones (see `sum`, `from_main`)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def from_main(self, value: int) -> int:
        """Rank 0's `value` on every process (so all ranks make rank 0's choice)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], device=self._comm_device)
        dist.broadcast(tensor, src=0)
        return int(tensor.cpu())

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        value = value.to(self._comm_device, copy=True)
        dist.all_reduce(value)
        return value.cpu()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true on every process if it is true on any (one small all-reduce)."""
        if self.world == 1:
            return list(flags)
        tensor = torch.tensor([int(f) for f in flags], device=self._comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(v) for v in tensor.cpu().tolist()]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class StopSignals:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step;
    a second one interrupts at once. Handlers are only installed from the main thread."""

    def __init__(self, main: bool):
        self.main = main
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signum
        if self.main:
            print(
                f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint (press Ctrl-C again to stop at once)",
                flush=True,
            )

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
