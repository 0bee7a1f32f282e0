"""The project's services runner: real Redis, Cassandra, Kafka and DynamoDB (moto) on loopback.

Run it as ``nox -s services -- up|down|status [names]``. Everything it creates
(data, logs, Maven caches, the generated ``env`` and ``prism.yaml``) lives under
the git-ignored ``.services/`` folder at the workspace root.
"""
