"""Candidate sources: the seam (:mod:`offline.sources.base`), its implementations, and the
registry that builds them by name (:mod:`offline.sources.registry`).

The names are ``recsvc.contract.CANDIDATE_SOURCES``, spelled once there because the bundle
and the server use them too: the keys of ``--param source_weights.<name>`` /
``source_quotas.<name>``, of the registry, of ``sources_ran`` and ``pool_scores/<name>`` in
the bundle, and ``CandidateSource.name``.
"""

from recsvc.contract import CANDIDATE_SOURCES

#: Every source, in the order the pipeline builds them (the pool merge sees them so).
SOURCE_NAMES = CANDIDATE_SOURCES
ITEMCF, ITEM2VEC, IMAGE, PSS = SOURCE_NAMES
