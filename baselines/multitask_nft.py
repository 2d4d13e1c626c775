"""Multi-task DiffusionNFT: task batches alternate round-robin; b = 0.1 as for several rewards."""

import dataclasses

from opd.registry import METHODS
from opd.training.rl import DiffusionNFT, NFTConfig


@dataclasses.dataclass
class MultitaskNFTConfig(NFTConfig):
    steps: int = 60
    beta_mix: float = 0.1


@METHODS.register("multitask_nft")
class MultitaskNFT(DiffusionNFT):
    Config = MultitaskNFTConfig
