"""XT models: Qwen3 / Qwen3-MoE and more, HF-compatible state dicts."""
