"""A photo's bytes → pixels: decoding every supported format upright in sRGB at the working
size asked for (decode.py; HEIC's container in heif.py), and the perceptual hash of the pixels
(phash.py). Pure functions; no I/O beyond the bytes handed in.
"""
