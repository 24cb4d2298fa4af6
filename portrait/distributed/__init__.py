"""One clip on several GPUs: ``group`` (launch detection, process group, the window executor of each
denoising step) and ``decode`` (VAE decode and interpolation split by chunks, streamed to rank 0)."""
