"""GGUF files: the bounded loader, the validated model config, the model registry."""
