"""XT data: sources, tokenization, chat templates, packing, resumable loaders."""
