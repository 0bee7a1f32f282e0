"""The KeyValue abstraction."""
