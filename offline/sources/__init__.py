"""Candidate sources: the seam (:mod:`offline.sources.base`), its implementations, and the
registry that builds them by name (:mod:`offline.sources.registry`).

The names below are the one spelling of each source in this package and the pipeline: the
keys of ``--param source_weights.<name>`` / ``source_quotas.<name>``, of the registry, of
``sources_ran`` and ``pool_scores/<name>`` in the bundle, and ``CandidateSource.name``.
"""

ITEMCF = "itemcf"
ITEM2VEC = "item2vec"
IMAGE = "image"
PSS = "pss"
#: Every source, in the order the pipeline builds them (the pool merge sees them so).
SOURCE_NAMES = (ITEMCF, ITEM2VEC, IMAGE, PSS)
