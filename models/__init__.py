"""Keras side of the project: the CNN-GRU, its backbones, DFDC-format data, training.

Importing this package does not import TensorFlow; the submodules that need it do.
"""
