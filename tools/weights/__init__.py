"""Weights tooling: fetch from the Hugging Face Hub, verify against a manifest, repack into one
bundle, upload to a Runpod network volume. Modules import torch lazily (only repack and bundle
need it), so `tools.weights` stays importable in environments without the engine extras.
"""
