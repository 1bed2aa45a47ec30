"""The processor: emoji_topic counted in 2-second windows with Spark Structured Streaming.

    job.py           source → parse → aggregate → sink, and the dead-letter batch job beside it
    transforms.py    the pure DataFrame → DataFrame steps the job is made of
    dead_letters.py  which offset ranges the dead-letter job reads again, and where it got to
    service.py       the running processor: query, progress metrics, /healthz and /metrics;
                     active, or the warm standby that takes over when the active one dies
    lock.py          the lock that lets one processor at a time run the query on the checkpoint
    spark.py         the SparkSession, with Spark's Kafka connector and the project's log4j2 file
    main.py          the entry point behind ``python3 emoji_processor.py``

This module imports no Spark, so the web UI can name the processor's query without it.
"""

# The streaming query's name, in Spark's progress reports and its listener events.
QUERY_NAME = "emostream-aggregates"
# The query a standby runs on made-up emoji to warm up (job.start_warm_up).
WARM_UP_QUERY_NAME = "emostream-warm-up"
# The observation (Dataset.observe) the query reports its accepted and rejected counts under.
COUNTS_OBSERVATION = "records"
ACCEPTED = "accepted"
