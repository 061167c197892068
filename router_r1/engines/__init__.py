"""The router LLM and what generates with it: `model` (load, save, build a tiny model, train its
tokenizer), `generation` (the Generation record and stop-string cutting), and the engines behind
`generate(prompts, ...)`: `hf` (transformers), `vllm`, `endpoint` (OpenAI-compatible completions)."""
