"""Video output: locate and run ffmpeg, stream frames to an H.264 encoder, mux the audio track.

``ffmpeg``: the binary (system ``ffmpeg`` first, else imageio-ffmpeg's static build) and a safe runner
(argument lists, never a shell; failures become :class:`~portrait.errors.FFmpegError` with stderr).
``video``: :class:`VideoWriter` streams frames chunk by chunk (spec 7.2). ``mux``: :func:`mux_audio`
adds the audio track with an atomic rename (spec 7.3) and :func:`probe_media` describes a media file
without ffprobe.
"""
