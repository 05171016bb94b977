"""Pixels → faces: the three steps of the face model and the backends that compute them.

    detect.py       step 1: face boxes (dlib HOG, dlib's CNN); retinaface.py: RetinaFace in PyTorch
    align.py        step 2: landmarks and 150×150 chips
    embed.py        step 3: 128-d descriptors (dlib); flip TTA
    quality.py      per-face quality from size and chip sharpness
    backends.py     the detector and embedder names (the one list) and the torch device rule
    model_files.py  where dlib's model files (.dat) live
    dlibport/       exact PyTorch/numpy ports of dlib's networks, chips and .dat reader

Per-image work only: no Ray, no output files (facejob.indexing puts these steps together).
"""
