"""The emoji processor: emoji per event in 2-second windows, with Spark Structured Streaming.

    python3 emoji_processor.py              # Spark in local mode inside this process
    bin/spark-submit emoji_processor.py     # the same job under spark-submit

emoji_topic is counted into aggregated_emoji_topic, poison goes to emoji_dead_letter_topic
(see emostream/processor/job.py); EMOSTREAM_SPARK_MASTER names a cluster. /healthz and
/metrics are served on EMOSTREAM_PROCESSOR_METRICS_PORT. SIGTERM or Ctrl-C stops it; the
checkpoint folder keeps its place for the next start.
"""

import sys

from emostream.processor.main import main

if __name__ == "__main__":
    sys.exit(main())
