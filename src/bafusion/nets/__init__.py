"""Nets: the paper's section 3.2, the CIFAR-style ResNet classifiers and their training.

The ResNet and its model files (:mod:`.model`), the augmenting patch loader
(:mod:`.augment`), training with checkpoints and resume (:mod:`.train`) and dense-pass
training on crops (:mod:`.dense_train`).

May import: the ground floor and :mod:`bafusion.data`; never fusion, evaluation or cli.
"""
