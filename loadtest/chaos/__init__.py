"""``make chaos``: failure scenarios against the real Redis and Kafka on loopback, each
printing one JSON line of figures (``python -m loadtest.chaos --help`` lists them). Every
loop is bounded in count and in time.

Each scenario is a module of this package with ``run(args) -> figures``, ``failures(figures)
-> reasons`` (empty when the run passed) and, if it has flags of its own,
``add_arguments(parser)``. ``common`` holds what they share.
"""
