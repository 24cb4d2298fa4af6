"""portrait: diffusion-based emotional talking-portrait video generation.

Importing the package is cheap: nothing heavy (torch, diffusers) is imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
