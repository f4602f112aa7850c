"""Herald benchmarks: every figure is measured beside a baseline in the same run.

``python -m bench.run`` (or ``make bench``) starts Herald as real subprocesses against
the local RabbitMQ (vhost ``herald_bench``), Redis (db 14) (``BENCH_VHOST`` and
``BENCH_REDIS_DB`` move them) and a throw-away SQLite file
(or ``--db postgresql``), drives it from a separate load-generator process, and prints one
table: scenario | metric | herald | baseline | ratio | target. Targets are reported,
never asserted: a benchmark that fails the build on a noisy 2-core box helps nobody.
"""
