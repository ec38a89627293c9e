"""The Transformer LM workload (lm.transformer): a Llama-architecture model trained on paged PS states."""
