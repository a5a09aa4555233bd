"""Text to ids: corpora, reading text as a stream, tokenizers, prepared data, batching."""
