"""`PackedLoader`: an endless, resumable, data-parallel iterator of packed micro-batches.

Plan of epoch e: the document chunks (`xt.data.packing.split_documents`) in a seeded random
order (``torch.randperm`` with seed ``seed * 1_000_003 + e``; source order when shuffle is off),
packed greedily into micro-batches of at most ``tokens_per_micro_batch`` tokens. Epochs follow
each other into one global stream of micro-batches. Data parallel rank r of R takes global
micro-batches ``s*R + r`` at its step s, so ranks get disjoint shares and stay in lockstep (with
R=1 the stream is unchanged). The position is the stream index at the start of the next step
(epoch, micro-batch within it), independent of the rank, so a state saved after step n resumes
at step n+1 exactly, on any rank, even with a different number of ranks.
"""
from __future__ import annotations

import torch

from xt.data.dataset import TokenizedDataset
from xt.data.errors import DataError
from xt.data.packing import make_batch, pack_boundaries, split_documents

STATE_VERSION = 1


class PackedLoader:
    """Iterator of micro-batch dicts (docs/contracts.md) over a `TokenizedDataset`; never ends.

    Args:
        dataset: the tokenized documents.
        tokens_per_micro_batch: token budget T of a micro-batch (>= 2).
        chunk_len: longest document in tokens (<= budget); longer documents are split.
        seed: shuffling seed. shuffle: False keeps source order.
        dp_rank, dp_size: data-parallel rank and world size (0 <= dp_rank < dp_size).

    Attributes:
        epoch: epoch of the last micro-batch yielded (0-based; -1 before the first).
        steps: micro-batches yielded by this loader (including before a restore).

    Raises:
        DataError: bad sizes or ranks (naming the argument).
    """

    def __init__(self, dataset: TokenizedDataset, tokens_per_micro_batch: int, chunk_len: int | None = None,
                 seed: int = 0, shuffle: bool = True, dp_rank: int = 0, dp_size: int = 1):
        chunk_len = tokens_per_micro_batch if chunk_len is None else chunk_len
        if not 1 <= chunk_len <= tokens_per_micro_batch:
            raise DataError(f"chunk_len must be in [1, tokens_per_micro_batch={tokens_per_micro_batch}], "
                            f"got {chunk_len}")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank={dp_rank} / dp_size={dp_size}: need 0 <= dp_rank < dp_size")
        self.dataset, self.budget, self.chunk_len = dataset, tokens_per_micro_batch, chunk_len
        self.seed, self.shuffle, self.dp_rank, self.dp_size = seed, shuffle, dp_rank, dp_size
        self.chunk_starts, self.chunk_lengths = split_documents(dataset.doc_offsets, chunk_len)
        self._lengths = self.chunk_lengths.tolist()
        self._plans: dict[int, tuple[torch.Tensor, list[int]]] = {}
        self._pos = (0, 0)  # (epoch, micro-batch index) of the stream at the start of the next step
        self.epoch, self.steps = -1, 0

    @property
    def num_chunks(self) -> int:
        """Number of document chunks (documents after splitting)."""
        return len(self._lengths)

    def plan(self, epoch: int) -> tuple[torch.Tensor, list[int]]:
        """``(order [C] int64, bounds)`` of `epoch`: micro-batch m holds chunks
        ``order[bounds[m]:bounds[m+1]]``. Deterministic in (seed, epoch); the last two are cached."""
        if epoch not in self._plans:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.num_chunks, generator=g)
            else:
                order = torch.arange(self.num_chunks)
            bounds = pack_boundaries([self._lengths[i] for i in order.tolist()], self.budget)
            if len(self._plans) >= 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = (order, bounds)
        return self._plans[epoch]

    def batches_in_epoch(self, epoch: int) -> int:
        """Number of micro-batches (all ranks together) in `epoch`."""
        return len(self.plan(epoch)[1]) - 1

    def _advance(self, pos: tuple[int, int], n: int) -> tuple[int, int]:
        epoch, index = pos[0], pos[1] + n
        while index >= self.batches_in_epoch(epoch):
            index -= self.batches_in_epoch(epoch)
            epoch += 1
        return epoch, index

    def __iter__(self) -> "PackedLoader":
        return self

    def chunk_ids(self, pos: tuple[int, int]) -> torch.Tensor:
        """``[C_m]`` int64: the chunks of the micro-batch at stream position ``(epoch, index)``, in order."""
        order, bounds = self.plan(pos[0])
        return order[bounds[pos[1]]:bounds[pos[1] + 1]]

    def batch_at(self, pos: tuple[int, int]) -> dict:
        """The micro-batch at stream position ``(epoch, index)`` (any rank's; no state changes)."""
        ids = self.chunk_ids(pos)
        return make_batch(self.dataset.tokens, self.dataset.loss_mask, self.chunk_starts[ids],
                          self.chunk_lengths[ids])

    def advance(self, pos: tuple[int, int], n: int) -> tuple[int, int]:
        """The stream position `n` micro-batches after `pos` (epochs roll over)."""
        return self._advance(pos, n)

    def __next__(self) -> dict:
        """The next micro-batch of this rank (see the module doc for the format)."""
        epoch, index = self._advance(self._pos, self.dp_rank)
        batch = self.batch_at((epoch, index))
        self._pos = self._advance(self._pos, self.dp_size)
        self.epoch, self.steps = epoch, self.steps + 1
        return batch

    def _fingerprint(self) -> dict:
        return {"data": self.dataset.key, "tokens_per_micro_batch": self.budget,
                "chunk_len": self.chunk_len, "seed": self.seed, "shuffle": self.shuffle}

    def state_dict(self) -> dict:
        """Position after the last micro-batch yielded: plain ints/strings (JSON-able). The same on
        every rank but ``last_epoch`` (named in ``per_rank_keys``), so a checkpoint re-splits over
        another number of ranks (`xt.core.checkpoint.load_checkpoint`)."""
        return {"version": STATE_VERSION, "epoch": self._pos[0], "index": self._pos[1],
                "steps": self.steps, "last_epoch": self.epoch, "per_rank_keys": ["last_epoch"],
                **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`: the next micro-batch is the one that followed when it was taken.

        Raises:
            DataError: a state from another data set, budget, seed or format version (naming the
            differing fields).
        """
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        diff = {k: (state.get(k), v) for k, v in self._fingerprint().items() if state.get(k) != v}
        if diff:
            raise DataError("loader state does not match this loader (saved, current): " +
                            ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items()))
        self._pos = (int(state["epoch"]), int(state["index"]))
        self.steps, self.epoch = int(state["steps"]), int(state["last_epoch"])

    def summary(self) -> dict:
        """Facts for the run log: documents, tokens, chunks, micro-batches in epoch 0, packing fill
        (tokens / (micro-batches * budget)), the budget, bad records skipped (with the first
        reasons) and empty records skipped."""
        n = self.batches_in_epoch(0)
        return {"documents": self.dataset.num_documents, "tokens": self.dataset.num_tokens,
                "chunks": self.num_chunks, "micro_batches_per_epoch": n,
                "fill": round(self.dataset.num_tokens / (n * self.budget), 4),
                "tokens_per_micro_batch": self.budget, "max_seq_len": self.chunk_len,
                "skipped": self.dataset.skipped, "skipped_examples": list(self.dataset.skipped_examples),
                "empty": self.dataset.empty}

    @property
    def skipped(self) -> int:
        """Bad records skipped while reading (``on_error="skip"``); report it at the end of a run."""
        return self.dataset.skipped

    @property
    def empty(self) -> int:
        """Empty files/records skipped while reading."""
        return self.dataset.empty
