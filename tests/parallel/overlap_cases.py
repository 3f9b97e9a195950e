"""The order of `parallel.ep_overlap`'s exchanges and expert calls, recorded on every rank of a pool."""
from __future__ import annotations

import torch
from torch import nn

NAMES = ("d0", "d1", "c0", "c1")  # dispatch / combine exchanges of chunks 0 and 1, in creation order


class _Experts(nn.Module):
    """Grouped GEMM over this rank's expert weights; records its forward and the start and end of
    its backward (a hook on its output's and on its input's gradient)."""

    def __init__(self, w: torch.Tensor, events: list) -> None:
        super().__init__()
        self.w, self.events, self.calls = nn.Parameter(w), events, 0

    def forward(self, x, counts):
        from xt.kernels.moe import grouped_gemm
        i, self.calls = self.calls, self.calls + 1
        x.register_hook(lambda g: self.events.append(f"experts{i} bwd end"))
        self.events.append(f"experts{i}")
        y = grouped_gemm(x, self.w, counts)
        y.register_hook(lambda g: self.events.append(f"experts{i} bwd start"))
        return y


def run_overlap_trace(spec: dict, state: dict) -> list[str]:
    """Forward + backward of one overlapped MoE exchange over the whole world (EP = world); returns
    this rank's events ("issue d1", "wait c0 (bwd)", "experts0", ...) in order."""
    import torch.distributed as dist

    from xt.parallel import ep_overlap
    events: list[str] = []
    label: dict[int, str] = {}
    issue, finish = ep_overlap._issue, ep_overlap._finish

    def tag(pending) -> str:
        if id(pending) not in label:
            label[id(pending)] = NAMES[len(label)]
        return label[id(pending)] + (" (bwd)" if torch._C._current_graph_task_id() != -1 else "")

    def traced_issue(x, out_splits, in_splits, group, pending):
        events.append(f"issue {tag(pending)}")
        return issue(x, out_splits, in_splits, group, pending)

    def traced_finish(pending):
        events.append(f"wait {tag(pending)}")
        finish(pending)

    rank, world = dist.get_rank(), dist.get_world_size()
    E, D, T = spec["num_experts"], spec["hidden"], spec["tokens"]
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(T, D, generator=g, requires_grad=True)
    ids = torch.stack([torch.randperm(E, generator=g)[:2] for _ in range(T)])
    w = torch.rand(T, 2, generator=g)
    El = E // world
    experts = _Experts(torch.randn(E, D, D, generator=torch.Generator().manual_seed(0))[rank * El:(rank + 1) * El], events)
    ep_overlap._issue, ep_overlap._finish = traced_issue, traced_finish
    try:
        d = ep_overlap.OverlappedAllToAllDispatcher(E, dist.group.WORLD)
        y = d.run_experts(x, ids, w, experts)
        events.append("backward")
        y.square().sum().backward()
    finally:
        ep_overlap._issue, ep_overlap._finish = issue, finish
    every = [None] * world
    dist.all_gather_object(every, events)
    return every
