"""Preprocessing of the inputs: portrait image (decode, face, mask, tensors) and audio (features, frames)."""
