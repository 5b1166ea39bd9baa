"""A minimal plain Django project: the baseline of the performance benchmark (bench_perf).

One database (the benchmark site's shard primary, through the same PgBouncer as the service),
django-db-geventpool, no middleware, `JsonResponse`, the service's Gunicorn settings with
Gunicorn's own gevent worker. Its views run the same SQL as the service's API and answer the
same JSON shape: a thread, a page of comments with their replies, a posted comment. It imports
nothing of the service, so the ratios price everything the service adds.

    PLAIN_DSN=postgresql://app@127.0.0.1:<pgbouncer>/shard_0 PLAIN_MAX_CONNS=20 \\
        gunicorn -c tests/benchmarks/plain_django/gunicorn_conf.py \\
        tests.benchmarks.plain_django.wsgi:application
"""
