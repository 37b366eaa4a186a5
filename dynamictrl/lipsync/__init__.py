"""Lip-sync: MuseTalk 1.5 inference on diffusers + transformers (see README, "Lip-sync")."""
