"""Generation for FlaxBartForConditionalGeneration and FlaxBartForCausalLM (being written)."""


class GenerationMixin:
    """Adds `generate` to the model classes that decode."""
