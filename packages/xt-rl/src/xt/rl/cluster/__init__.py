"""Ray orchestration of RL runs (extra ``xt-rl[ray]``): actors for the rollout, reward and trainer
workers (`xt.rl.cluster.actors`), bucketed weight hand-over (`xt.rl.cluster.weights`) and the driver
(`xt.rl.cluster.driver.RayRun`), with ``orchestrator.kind = "ray"`` in an `xt rl` config.

Ray is imported only when a `RayRun` starts, so this package imports without it.
"""
from xt.rl.cluster.driver import RayRun, import_ray

__all__ = ["RayRun", "import_ray"]
