"""Session fixture for a real Kafka-protocol broker (tansu). Filled in by the bus work."""
