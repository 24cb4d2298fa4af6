"""A synthetic talking-head task whose answers are known, for showing that training learns.

``face``: a drawn face from 68 landmarks, and the colour-based detector, landmarker and centroid that find
it again; ``dataset``: clips that move along known paths, open the mouth with their audio and show a labelled
emotion, written in the CSV layout ``portrait-gen train prepare`` reads.
"""
