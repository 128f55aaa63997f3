"""The GroupRank trainer: mining, label synthesis, SFT, GRPO, an evaluation gate and a model registry.

Modules, in pipeline order:

- ``mining``: candidates from ``Index.search`` (the serving path), groups of positives + hard negatives,
  a seeded train/test split by query.
- ``teachers`` and ``synthesis``: pointwise and listwise teachers (qrels or any reranker), fused into
  integer 0-10 targets; the training conversations use the engine's own groupwise prompt.
- ``sft`` and ``grpo``: trl's SFTTrainer and GRPOTrainer (full or LoRA); ``rewards`` holds the GRPO reward.
- ``evaluation`` (the gate), ``registry`` (versions and the atomic serving pointer), ``pipeline``
  (``run_pipeline``: resumable, one run at a time via ``locks``).
- ``config``: every setting, as dataclasses.

Heavy libraries (torch, transformers, trl) are imported inside the functions that need them.
"""

from __future__ import annotations

from trainer.config import PipelineConfig
from trainer.locks import PipelineBusy
from trainer.pipeline import run_pipeline
from trainer.registry import CurrentModel, Registry

__all__ = ["CurrentModel", "PipelineBusy", "PipelineConfig", "Registry", "run_pipeline"]
