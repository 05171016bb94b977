"""Exact PyTorch/numpy ports of dlib's face networks, reading dlib's own .dat files."""
