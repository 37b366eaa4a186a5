"""Lip-sync: MuseTalk 1.5 inference on diffusers + transformers (see docs/lip-sync.md and docs/dependencies.md)."""
