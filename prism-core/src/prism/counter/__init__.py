"""The Counter abstraction: best-effort or exact distributed counters."""
