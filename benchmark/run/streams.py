"""The cell's named random streams: each draws from its own seed, derived from the run's seed and its name.

Deriving by hashing `(seed, name)` keeps the streams apart: no two share a seed (defense-data choice, poisoning,
training and the defense used to start from the same one), and seed 1's attack stream is not seed 0's + 1.
`STREAMS_VERSION` is recorded in result.json: resume reruns a cell whose result came from other streams.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

# 1: every stream seeded with the run's seed (the attack's with seed + 1); 2: seeds derived from (seed, name).
STREAMS_VERSION = 2


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the stream `name` of run seed `seed` (sha256 of both: stable across machines)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class Streams:
    """The cell's random streams, each named for what it draws.

    Each call returns a fresh generator, so one stream's use never shifts another's draws.
    """

    seed: int

    def _generator(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device).manual_seed(stream_seed(self.seed, name))

    def defense_subset(self) -> torch.Generator:
        """Which reserve images become the defense data."""
        return self._generator("defense_subset")

    def poison(self) -> torch.Generator:
        """Which training images are poisoned (and covered)."""
        return self._generator("poison")

    def attack(self, device: torch.device) -> torch.Generator:
        """What an attack draws while preparing (learned triggers, generators)."""
        return self._generator("attack", device)

    def train(self, device: torch.device) -> torch.Generator:
        """Batch order and augmentation of model training (backdoored or clean)."""
        return self._generator("train", device)

    def defense(self, device: torch.device) -> torch.Generator:
        """What the defense draws (batches, noise)."""
        return self._generator("defense", device)
