"""Weight files: checkpoint layout, safetensors loading and prefetch, the bundle format, LoRA, fp8 row quantisation."""
