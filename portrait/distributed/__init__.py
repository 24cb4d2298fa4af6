"""One clip on several processes (layer 3, ``torchrun`` / ``srun``): the same frames as one process.

- ``group``: launch detection, the process group, the window executor of each denoising step.
- ``decode``: VAE decode and interpolation split by chunks across the ranks, streamed to rank 0.

See docs/distributed.md.
"""
