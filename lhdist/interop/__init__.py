"""Hugging Face interop: lhdist checkpoints to LlamaForCausalLM folders and back, tokenizer too."""
