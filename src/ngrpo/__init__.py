"""ngrpo: GRPO and N-GRPO (Semantic Neighbor Mixing) for reasoning language models."""

__version__ = "0.1.0"
