"""Test helper for xt.core: a minimal gloo `DistContext` for a replicated model (call it in a
process where ``torch.distributed`` is initialised)."""
import torch
import torch.distributed as dist


class GlooDataParallel:
    """A minimal DistContext for a replicated model: token counts and gradients summed."""

    def __init__(self):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def all_reduce_sum(self, t):
        dist.all_reduce(t)
        return t

    def clip_grad_norm_(self, params, max_norm):
        params = list(params)
        for p in params:  # the gradient of the global objective is the sum over ranks
            dist.all_reduce(p.grad)
        return torch.nn.utils.clip_grad_norm_(params, max_norm).float()

    def set_grad_sync(self, model, enabled):
        pass

    def barrier(self):
        dist.barrier()
