"""``recsvc pipeline --engine spark``: the data-heavy offline stages on Apache Spark.

PySpark is an optional extra (``pip install 'recsvc[spark]'``, Java 17 or newer): nothing
outside this package imports it, and this package imports it only when a stage runs. Each
module gives the same result as the local engine's code it stands for, which
``tests/integration/test_spark_engine.py`` checks:

- :mod:`offline.spark.events`: a delimited or Parquet event file into the same
  :class:`~offline.data.events.EventLog`, with the same skip report;
- :mod:`offline.spark.itemcf`: item-CF's co-occurrence counts and top-k, a block of items
  per task, the neighbours of :class:`~offline.sources.itemcf.ItemCF`;
- :mod:`offline.spark.sequences`: item2vec's skip-gram pairs and the personalized models'
  examples, written as Parquet shards and memory-mapped for the training loop;
- :mod:`offline.spark.pools`: the pool merge of :func:`offline.pools.merge_pools`.
"""
