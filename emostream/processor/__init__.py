"""The processor: emoji_topic counted in 2-second windows with Spark Structured Streaming."""
