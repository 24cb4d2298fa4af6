"""Fine-tuning (layer 3, ``portrait-gen train``): cache a talking-head dataset once, train, install.

- ``data``: training sources, labels from dataset file names, the feature cache and its speaker split.
- ``prepare``: decode, crop and encode every training video once into the cache.
- ``trainer``: one accelerate trainer (seeded steps, exact resume, logs, loss plot).
- ``checkpoints``: a step's checkpoint folder (model, optimiser, schedule, RNG; safetensors + JSON).
- ``recipe``: what the recipes share (options, cached clips, run identity, export).
- ``emotion_embedder``: recipe ``train embedder``; ``landmark_guider``: recipe ``train motion``.
- ``validate``: the validation render of ``train motion --validate-render``.
- ``install``: add a trained component to a weights tree.
- ``learning_check``: training shown to learn on a synthetic task, end to end (``scripts/learning_check.py``).

See docs/training.md.
"""
