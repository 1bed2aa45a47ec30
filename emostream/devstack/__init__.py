"""Local infrastructure for development and tests: the KRaft broker, local Kafka and Spark clusters, the supervisor, the ingest pool."""
