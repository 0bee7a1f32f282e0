"""The TimeSeries abstraction: events by series and time, with retention."""
