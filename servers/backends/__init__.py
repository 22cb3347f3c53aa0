"""Torch backends: forward passes, dtype and attention selection."""
