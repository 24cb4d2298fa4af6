"""The networks (layer 1): ``nn.Module``s with plain hyper-parameters; no file I/O, no device choice.

- ``unet``: the DICE-Talk UNet (SVD's, with pose residual and audio/emotion adapters).
- ``attention``: the adapter attention processors and the context they route.
- ``audio``: Whisper hidden states → per-frame windows → audio tokens (``AudioProjector``).
- ``emotion_model``: an emotion prior → emotion tokens.
- ``emotion_classifier``: the release's latent emotion classifier (unused at inference).
- ``emotion_embedder``: the learned audio-visual emotion embedder.
- ``identity``: CLIP image embedding and VAE reference latents of the portrait.
- ``pose_guider``: the face mask → residual after the UNet's ``conv_in``.
- ``landmark_guider``: per-frame motion maps → the same residual.
- ``interpolation``: RIFE HDv3 (``IFNet``, ``midframes``).
- ``expression_classifier``: the mini-Xception facial-expression classifier.
- ``syncnet``: SyncNet, behind the LSE-C / LSE-D (Sync-C / Sync-D) metrics.
- ``inception``: the FID Inception-v3 (pytorch-fid's blocks, 2048-d pool features).
- ``i3d``: the FVD I3D (VideoGPT's Kinetics-400 ``InceptionI3d``).
"""
