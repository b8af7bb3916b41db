"""Infrastructure at the edge: settings, the embedded stack, Kafka topics and database migrations."""
