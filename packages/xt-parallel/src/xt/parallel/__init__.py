"""XT parallel: device meshes, FSDP2, expert and Ulysses sequence parallelism.

Entry point: :func:`xt.parallel.api.parallelize` ``(model, ParallelConfig) -> (model, dist_ctx)``,
which follows the model's :class:`~xt.parallel.plan.ParallelPlan` (``model.parallel_plan()``, or
discovery by attribute names for models without one: :mod:`~xt.parallel.discover`).
Building blocks (each usable on plain ``nn.Module``s): :mod:`~xt.parallel.mesh`,
:mod:`~xt.parallel.fsdp`, :mod:`~xt.parallel.expert_parallel`, :mod:`~xt.parallel.ulysses`,
:mod:`~xt.parallel.sp_batch`, :mod:`~xt.parallel.checkpointing`, :mod:`~xt.parallel.clip`,
:mod:`~xt.parallel.gather`, and the HF adapter :mod:`~xt.parallel.hf_qwen3_moe`.
"""
from xt.parallel.api import init_distributed, parallelize
from xt.parallel.config import ParallelConfig
from xt.parallel.context import ParallelDistContext
from xt.parallel.expert_parallel import AllToAllDispatcher
from xt.parallel.mesh import LayoutError, ParallelMeshes, build_meshes, validate_layout
from xt.parallel.plan import MoEBlockPlan, ParallelPlan
from xt.parallel.sp_batch import shard_batch_for_sp
from xt.parallel.ulysses import UlyssesAttention

__all__ = ["parallelize", "init_distributed", "ParallelConfig", "ParallelDistContext", "AllToAllDispatcher",
           "LayoutError", "ParallelMeshes", "build_meshes", "validate_layout", "shard_batch_for_sp",
           "UlyssesAttention", "ParallelPlan", "MoEBlockPlan"]
