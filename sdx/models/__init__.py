"""Models: image classifiers, CLIP (load, encode, zero-shot, adapters, tokenizer)."""
