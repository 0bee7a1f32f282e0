"""The Queue abstraction: pub/sub with consumer groups and a durable log."""
