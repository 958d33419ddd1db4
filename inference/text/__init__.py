"""Text: tokenizer (BPE and SentencePiece), chat template, incremental output text, JSON mode."""
