"""Frames out: ``video`` streams frames to an H.264 encoder (compat §7.2), ``mux`` adds the audio track
with an atomic rename (compat §7.3), ``paste`` puts the animated face back into the whole photo. The ffmpeg
binary and its safe runner live in :mod:`portrait.ffmpeg`."""
