"""Evaluation: the paper's section 4, Table 1 and the figures.

The four fusion metrics of the reference MATLAB code (:mod:`.metrics`), the classic baseline
methods (:mod:`.baselines`), Table 1 over the datasets (:mod:`.evaluate`) and its figures
(:mod:`.figures`).

May import: the ground floor, :mod:`bafusion.data`, :mod:`bafusion.nets` and
:mod:`bafusion.fusion`; never :mod:`bafusion.cli`.
"""
