"""Data mixing: several sources with weights, as one deterministic, resumable stream.

Each source of ``[[data.mix]]`` has its own `PackedLoader` stream (its documents shuffled per epoch
and packed to the ``[data]`` budget, as a single source would be). The global stream of
micro-batches takes micro-batch g from the source that smooth weighted round-robin picks: every
source's credit grows by its weight, the source with the largest credit (the first on a tie) is
picked and loses the sum of the weights. After n picks source j has been picked within one of
``n * w_j / Σ w`` times, in a fixed interleaved order, with no randomness to seed. Data-parallel
rank r takes global micro-batch ``s*R + r`` as `PackedLoader` does; every rank replays the same
picks, so the state (the credits, the picks per source, each source's position) is the same on
every rank and a checkpoint re-splits over another number of ranks. `realised_mix` reports the
shares drawn so far.
"""
from __future__ import annotations

import msgspec

from xt.data.config import DataConfig
from xt.data.errors import DataError

__all__ = ["MixedLoader", "mix_parts"]

STATE_VERSION = 1


def mix_parts(cfg: DataConfig) -> list[tuple[DataConfig, float]]:
    """``[(the [data] section of one source, its weight)]`` for ``source = "mix"``: each source's
    `source`, `paths` and `max_documents` over the shared settings of `cfg`; ``[data.vision]``
    only for its image-text sources (`xt.data.config.MixSource.has_images`)."""
    return [(msgspec.structs.replace(cfg, source=m.source, paths=m.paths, max_documents=m.max_documents, mix=(),
                                     vision=cfg.vision if m.has_images else None),
             float(m.weight)) for m in cfg.mix]


class MixedLoader:
    """The loader contract (an endless iterator of micro-batches with ``state_dict()`` /
    ``load_state_dict()``) over weighted sources (module docstring).

    Args:
        loaders: one `xt.data.PackedLoader` per source (built with dp_rank 0, dp_size 1: this class
            splits); `xt.data.build_loader` builds them for ``source = "mix"``.
        weights: > 0 each, relative.
        names: for the summary and `realised_mix`.
        dp_rank, dp_size: data-parallel rank and world size.

    Raises:
        DataError: bad weights or ranks.
    """

    def __init__(self, loaders: list, weights: list[float], names: list[str],
                 dp_rank: int = 0, dp_size: int = 1) -> None:
        if len(loaders) != len(weights) or not loaders or min(weights) <= 0:
            raise DataError(f"data.mix: need one weight > 0 per source, got {weights}")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank={dp_rank} / dp_size={dp_size}: need 0 <= dp_rank < dp_size")
        self.loaders, self.weights, self.names = loaders, [float(w) for w in weights], names
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.credits = [0.0] * len(loaders)
        self.picks = [0] * len(loaders)
        self.pos = [(0, 0)] * len(loaders)

    def _pick(self) -> int:
        total = sum(self.weights)
        for j, w in enumerate(self.weights):
            self.credits[j] += w
        j = max(range(len(self.weights)), key=lambda k: (self.credits[k], -k))
        self.credits[j] -= total
        return j

    def __iter__(self) -> MixedLoader:
        return self

    def __next__(self) -> dict:
        """This rank's micro-batch of the next step: the global stream's ``s*R + r``."""
        batch = None
        for r in range(self.dp_size):
            j = self._pick()
            if r == self.dp_rank:
                batch = self.loaders[j].batch_at(self.pos[j])
            self.pos[j] = self.loaders[j].advance(self.pos[j], 1)
            self.picks[j] += 1
        return batch

    def realised_mix(self) -> dict[str, float]:
        """``{source: share of the micro-batches drawn so far (all ranks)}``."""
        n = sum(self.picks) or 1
        return {name: p / n for name, p in zip(self.names, self.picks)}

    def state_dict(self) -> dict:
        """The same on every rank: credits, picks and positions per source, and what identifies
        the sources (their data keys and weights)."""
        return {"version": STATE_VERSION, "credits": list(self.credits), "picks": list(self.picks),
                "pos": [list(p) for p in self.pos], "weights": list(self.weights),
                "sources": [ld._fingerprint() for ld in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` output.

        Raises:
            DataError: a state of another mix (sources, their data or weights) or version.
        """
        if state.get("version") != STATE_VERSION:
            raise DataError(f"mixed loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        mine = {"weights": list(self.weights), "sources": [ld._fingerprint() for ld in self.loaders]}
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            raise DataError(f"loader state is of another data mix ({', '.join(diff)} differ): "
                            f"saved {[state.get(k) for k in diff]}, now {[mine[k] for k in diff]}")
        self.credits = [float(c) for c in state["credits"]]
        self.picks = [int(p) for p in state["picks"]]
        self.pos = [(int(e), int(i)) for e, i in state["pos"]]

    def summary(self) -> dict:
        """Facts for the run log: per source its documents, tokens and weight share."""
        total = sum(self.weights)
        return {"mix": [{"source": n, "weight": w / total, "documents": ld.dataset.num_documents,
                         "tokens": ld.dataset.num_tokens} for n, w, ld in zip(self.names, self.weights, self.loaders)],
                "tokens_per_micro_batch": self.loaders[0].budget}

    @property
    def skipped(self) -> int:
        """Bad records skipped over all sources."""
        return sum(ld.skipped for ld in self.loaders)
