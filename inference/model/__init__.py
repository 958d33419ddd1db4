"""The Llama-family transformer, its weights and the compute backends."""
