"""Multi-task DiffusionNFT: task batches alternate round-robin; b = 0.1 as for several rewards."""

from baselines._configs import MultitaskNFTConfig
from opd.registry import METHODS
from opd.training.rl import DiffusionNFT


@METHODS.register("multitask_nft")
class MultitaskNFT(DiffusionNFT):
    Config = MultitaskNFTConfig
