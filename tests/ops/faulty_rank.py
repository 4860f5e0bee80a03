"""A training rank with an injected fault, for the distributed tests (torchrun runs it as
``-m tests.ops.faulty_rank``). ``VISIONFORGE_TEST_FAULT=RANK:EPOCH:STEP:raise|kill`` makes that
rank raise, or SIGKILL itself, when it reaches that batch; every other rank trains normally."""

from __future__ import annotations

import os
import signal

import ops.train
from ops.distributed import World, worker_main

FAULT_ENV = "VISIONFORGE_TEST_FAULT"


class FaultyProgress:
    """Stands in for the loop's tqdm bar; raises or dies at the chosen batch of the chosen rank."""

    fault: tuple[int, int, int, str] = (-1, 0, 0, "raise")

    def __init__(self, iterable, *args, **kwargs):
        self.bar = REAL_TQDM(iterable, *args, **kwargs)
        self.epoch = int(kwargs["desc"].split()[1].split("/")[0])

    def __iter__(self):
        rank, epoch, step, action = self.fault
        for index, batch in enumerate(self.bar, start=1):
            if World.from_env().rank == rank and self.epoch == epoch and index == step:
                if action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected failure at epoch {epoch} step {step}")
            yield batch

    def set_postfix(self, **kwargs):
        self.bar.set_postfix(**kwargs)


REAL_TQDM = ops.train.tqdm

if __name__ == "__main__":
    rank, epoch, step, action = os.environ[FAULT_ENV].split(":")
    FaultyProgress.fault = (int(rank), int(epoch), int(step), action)
    ops.train.tqdm = FaultyProgress
    worker_main()
