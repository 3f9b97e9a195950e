"""XT parallel: device meshes, FSDP2, expert and Ulysses sequence parallelism.

Entry point: :func:`xt.parallel.api.parallelize` ``(model, ParallelConfig) -> (model, dist_ctx)``,
which follows the model's :class:`~xt.parallel.plan.ParallelPlan` (``model.parallel_plan()``, or
discovery by attribute names for models without one: :mod:`~xt.parallel.discover`).
Building blocks (each usable on plain ``nn.Module``s): :mod:`~xt.parallel.mesh`,
:mod:`~xt.parallel.fsdp`, :mod:`~xt.parallel.expert_parallel`, :mod:`~xt.parallel.ulysses`,
:mod:`~xt.parallel.sp_batch`, :mod:`~xt.parallel.checkpointing`, :mod:`~xt.parallel.clip`,
:mod:`~xt.parallel.gather`, :mod:`~xt.parallel.materialize` (this rank's shards of a model built on
the meta device), and the HF adapter :mod:`~xt.parallel.hf_qwen3_moe`.

Assembling a run (any composer: ``xt train``, an RL driver), from the ``[parallel]`` section:
:func:`check_layout` before the model is built, :func:`device_for_run`, :func:`apply_layout` (torchrun
or one process, :mod:`~xt.parallel.layout`), :func:`rank_loader` (this rank's data-parallel loader, cut
to its SP slice: :mod:`~xt.parallel.rank_loader`), and :func:`exporter` (the export hook: gather, main
rank writes with the caller's writer: :mod:`~xt.parallel.export`).
"""
from xt.parallel.api import init_distributed, parallelize
from xt.parallel.config import ParallelConfig
from xt.parallel.context import ParallelDistContext
from xt.parallel.expert_parallel import AllToAllDispatcher
from xt.parallel.export import exporter
from xt.parallel.materialize import is_meta_model, materialize_
from xt.parallel.layout import apply_layout, check_layout, describe_layout, device_for_run, under_torchrun
from xt.parallel.mesh import LayoutError, ParallelMeshes, build_meshes, validate_layout
from xt.parallel.plan import MoEBlockPlan, ParallelPlan
from xt.parallel.rank_loader import SequenceShardedLoader, rank_loader
from xt.parallel.sp_batch import shard_batch_for_sp
from xt.parallel.ulysses import UlyssesAttention

__all__ = ["parallelize", "init_distributed", "ParallelConfig", "ParallelDistContext", "AllToAllDispatcher",
           "LayoutError", "ParallelMeshes", "build_meshes", "validate_layout", "shard_batch_for_sp",
           "UlyssesAttention", "ParallelPlan", "MoEBlockPlan", "apply_layout", "check_layout", "describe_layout",
           "device_for_run", "under_torchrun", "rank_loader", "SequenceShardedLoader", "exporter",
           "materialize_", "is_meta_model"]
