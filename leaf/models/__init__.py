"""Models leaf builds or converts itself, so that everything runs offline: tiny random models of each architecture
family (`leaf.models.tiny`) and the pretrained SmolLM2 read from its GGUF (`leaf.models.pretrained`)."""
