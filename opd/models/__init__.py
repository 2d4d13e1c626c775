"""Model interface, tiny builders, the SD3.5 loader and LoRA adapter helpers.

`FlowModel` (in `opd.models.base`) is what the sampler, the trainers and the evaluation see: prompt
embeddings, velocities with batched CFG, decode / encode, and named LoRA adapters on one backbone;
`opd.models.prompts` holds the prompt encoders and their `PromptEmbeds`.
`opd.models.tiny` builds the mini world's model and a tiny random SD3 pipeline locally;
`opd.models.sd3` loads SD3.5-Medium through diffusers; `opd.models.lora` holds the adapter helpers
(switching without peft's requires_grad side effects, peft-format files, exact LoRA merging);
`opd.models.compile` compiles a transformer in place, or keeps it eager where no compiler works.
"""

from opd.models.base import FlowModel
from opd.models.lora import BASE, DEFAULT_TARGETS, load_lora_from_dir, make_lora_config
from opd.models.prompts import ClipPromptEncoder, PromptEmbeds, PromptEncoder
from opd.models.sd3 import SD35_MEDIUM, SD3PromptEncoder, load_sd3
from opd.models.tiny import (
    TinyModelConfig,
    build_tiny_flow_model,
    build_tiny_sd3_pipeline,
    build_tiny_sd3_pipeline_dir,
    build_tokenizer,
)

__all__ = [
    "BASE",
    "DEFAULT_TARGETS",
    "SD35_MEDIUM",
    "ClipPromptEncoder",
    "FlowModel",
    "PromptEmbeds",
    "PromptEncoder",
    "SD3PromptEncoder",
    "TinyModelConfig",
    "build_tiny_flow_model",
    "build_tiny_sd3_pipeline",
    "build_tiny_sd3_pipeline_dir",
    "build_tokenizer",
    "load_lora_from_dir",
    "load_sd3",
    "make_lora_config",
]
