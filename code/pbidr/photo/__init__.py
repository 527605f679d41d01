"""The photo front end: a textured coarse face mesh from one photo (``pbidr photo``), without OSTeC.

MediaPipe is an optional extra (``requirements-photo.txt``); it is imported only when a photo is
processed, and its absence is a one-line error that says how to install it.
"""
