"""Compute paths: attention backends, fused fp8 attention, torch.compile, host offload and block streaming."""
