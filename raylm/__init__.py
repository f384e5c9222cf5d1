"""raylm: LLM training on Ray, from raw text to a trained, evaluated, fine-tuned and tuned GPT."""

__version__ = "0.1.0"
