"""Scale-out: meshes, data-parallel steps, ZeRO-sharded optimizer state, multi-host.

Everything here is a re-export; the implementations live in topical modules.
"""

from scirs2_optim_jax.parallel.collectives import (
    Collective,
    CollectiveBytes,
    collective_bytes,
    expected_collective_bytes,
    hlo_collectives,
)
from scirs2_optim_jax.parallel.data_parallel import (
    DataParallelStep,
    make_data_parallel_step,
    with_unit_axis,
)
from scirs2_optim_jax.parallel.distributed import (
    DistributedConfig,
    any_process,
    distributed_from_env,
    init_distributed,
    resolve_distributed_config,
    step_deadline,
)
from scirs2_optim_jax.parallel.gspmd import constrain, zero_gspmd, zero_state_shardings
from scirs2_optim_jax.parallel.layout import zero_chunk_size
from scirs2_optim_jax.parallel.mesh import DeviceInfo, DeviceSummary, device_summary, make_data_mesh
from scirs2_optim_jax.parallel.placement import put_on_mesh, to_host
from scirs2_optim_jax.parallel.reductions import ShardReductionError, check_shard_reductions
from scirs2_optim_jax.parallel.shape_check import ShardShapeError, check_shard_shapes
from scirs2_optim_jax.parallel.zero import (
    gather_updates,
    reduce_gradients,
    shard_params,
    update_slices,
    zero,
    zero_state_from_canonical,
    zero_state_specs,
    zero_state_to_canonical,
)
from scirs2_optim_jax.parallel.zero_layout import ZeroLayout

__all__ = [
    "Collective",
    "CollectiveBytes",
    "DataParallelStep",
    "DeviceInfo",
    "DeviceSummary",
    "DistributedConfig",
    "ShardReductionError",
    "ShardShapeError",
    "ZeroLayout",
    "any_process",
    "check_shard_reductions",
    "check_shard_shapes",
    "collective_bytes",
    "constrain",
    "device_summary",
    "distributed_from_env",
    "expected_collective_bytes",
    "gather_updates",
    "hlo_collectives",
    "init_distributed",
    "make_data_mesh",
    "make_data_parallel_step",
    "put_on_mesh",
    "reduce_gradients",
    "resolve_distributed_config",
    "shard_params",
    "step_deadline",
    "to_host",
    "update_slices",
    "with_unit_axis",
    "zero",
    "zero_chunk_size",
    "zero_gspmd",
    "zero_state_from_canonical",
    "zero_state_shardings",
    "zero_state_specs",
    "zero_state_to_canonical",
]
