"""Sharded training of the student on CPU: FSDP2 (torch's `fully_shard`) under `accelerate launch --config_file
configs/accelerate/fsdp.yaml`, over gloo.

torch shards on CPU (FSDP2 over gloo), but accelerate turns an FSDP launch into FSDP only on accelerators: its
multi-process CPU state (MULTI_CPU) never takes the FSDP branch of `AcceleratorState`, so the run silently trains
as plain DDP. `fsdp_on_cpu` sets, before the Trainer creates its Accelerator, the state accelerate sets itself on
GPUs (distributed type FSDP and the plugin read from the launch's FSDP_* environment); the Trainer's Accelerator
then shares it. On GPUs it does nothing: accelerate's own path runs.

On every device, `real_weights_on_every_rank` keeps FSDP's memory-saving load away from the teacher.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def real_weights_on_every_rank():
    """Load a model that FSDP will not shard (the frozen teacher) with its weights on every process.

    With `fsdp_cpu_ram_efficient_loading: true` (configs/accelerate/fsdp.yaml: a 70B student is read once, by
    rank 0, and broadcast when accelerate shards it), transformers' from_pretrained fills every model loaded on
    the other ranks with zeros, expecting that broadcast. The teacher is never sharded, so on those ranks it would
    score every position with a uniform distribution; inside this block its weights are read from disk as usual.
    """
    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def fsdp_requested() -> bool:
    """Whether this process was started by `accelerate launch` with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_on_cpu(device: str, processes: int) -> bool:
    """Under an FSDP launch on CPU with several processes: the accelerate state of an FSDP run. True if set."""
    if device != "cpu" or processes < 2 or not fsdp_requested():
        return False
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    plugin = FullyShardedDataParallelPlugin()
    state = AcceleratorState(cpu=True, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP        # what AcceleratorState sets on accelerators,
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP   # and passes on to PartialState
    return True
