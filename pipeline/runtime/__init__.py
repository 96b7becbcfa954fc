"""The streaming runtime around the detection engine: consume, align, checkpoint, sink, notify."""
