"""The suite. Under pytest-xdist (``-n N``) each worker gets its own RabbitMQ vhost, Redis
database and PostgreSQL database, derived here before any test module reads them, so
parallel workers never consume, flush or truncate each other's data.

Herald settings from the caller's shell (``make`` exports ``HERALD_BOOTSTRAP_API_KEY`` for
``make run``; a developer may have ``HERALD_DATABASE_URL`` set) are dropped first: every
test states the settings it runs with, and the ones it starts processes with."""

import os

for _name in [
    n for n in os.environ if n.startswith("HERALD_") and not n.startswith("HERALD_TEST_")
]:
    del os.environ[_name]

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    _n = int(_worker.removeprefix("gw"))
    _amqp = os.environ.get("HERALD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/herald_test")
    os.environ["HERALD_TEST_AMQP_URL"] = f"{_amqp}_{_worker}"
    _redis, _, _db = os.environ.get(
        "HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
    ).rpartition("/")
    # Every other database: the bench owns db 14.
    os.environ["HERALD_TEST_REDIS_URL"] = f"{_redis}/{int(_db) - 2 * _n}"
    _pg = os.environ.get("HERALD_TEST_PG_DATABASE", "herald_test")
    os.environ["HERALD_TEST_PG_DATABASE"] = f"{_pg}_{_worker}"
