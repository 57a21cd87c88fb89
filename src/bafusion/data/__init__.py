"""Data: the paper's section 3.1, from downloads to training patches.

Sources and their checksums (:mod:`.download`, :mod:`.acquire`, :mod:`.coco`,
:mod:`.sources`, :mod:`.mattes`), the prepared foregrounds (:mod:`.prepare`), the composited
pairs (:mod:`.composite`) and the HDF5 patch sets (:mod:`.patches`), with their counts
(:mod:`.counts`).

May import only the ground floor (:mod:`bafusion.io`, ``errors``, ``atomic``, ``progress``,
``tracking``, ...): data flows one way, data -> nets -> fusion -> evaluation.
"""
