"""The networks: DiT and its blocks, Wan VAE, umT5, CLIP vision tower, audio adapter/wav2vec2, RoPE, Kokoro TTS."""
