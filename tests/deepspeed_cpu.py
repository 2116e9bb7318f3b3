"""Lightning's DeepSpeed strategy on CPU processes, for tests only.

Lightning 2.6 refuses DeepSpeed on anything but CUDA ("The DeepSpeed strategy is only supported on CUDA GPUs
but `CPUAccelerator` is used."), although DeepSpeed itself has a CPU accelerator (DS_ACCELERATOR=cpu, gloo).
This subclass lifts Lightning's two CUDA-only checks so the tests run DeepSpeed's real ZeRO engine
(partitioned optimizer state and gradients, reduce-scatter) with the project's module on 2 CPU processes.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy on CPU: Lightning's set-up without its CUDA-only checks."""

    def setup_environment(self) -> None:
        """DDPStrategy's set-up, which DeepSpeedStrategy runs after refusing any accelerator but CUDA."""
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        """DeepSpeedStrategy.setup_distributed without the check that device indices are CUDA ranks."""
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        """cpu:<local rank>: DeepSpeed's engine wants an integer device index (Lightning passes
        root_device.index, None for a plain CPU device); tensors on cpu:1 still live on the CPU."""
        return torch.device("cpu", self.local_rank)
