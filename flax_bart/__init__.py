"""Flax BART with the transformers-4.x Flax API. Imports no PyTorch."""

from flax_bart.config import BartConfig, ConfigError
from flax_bart.generation_config import GenerationConfig
from flax_bart.host_memory import tune_host_allocator
from flax_bart.models import (
    FlaxBartDecoderPreTrainedModel,
    FlaxBartForCausalLM,
    FlaxBartForConditionalGeneration,
    FlaxBartForQuestionAnswering,
    FlaxBartForSequenceClassification,
    FlaxBartModel,
    shift_tokens_right,
)
from flax_bart.pretrained import FAST_COMPILE, FlaxBartPreTrainedModel
from flax_bart.qa import answer_question, best_spans
from flax_bart.tokenizer import BartTokenizer
from flax_bart.validation import InputError

__version__ = "0.1.0"

__all__ = [
    "BartConfig", "ConfigError", "GenerationConfig", "InputError", "BartTokenizer", "FlaxBartPreTrainedModel",
    "FlaxBartDecoderPreTrainedModel", "FlaxBartModel",
    "FlaxBartForConditionalGeneration", "FlaxBartForSequenceClassification", "FlaxBartForQuestionAnswering",
    "FlaxBartForCausalLM", "shift_tokens_right", "answer_question", "best_spans", "tune_host_allocator",
    "FAST_COMPILE",
]
