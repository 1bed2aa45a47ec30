# EmoStream: the two commands are `make run` and `make test`.
.PHONY: setup run test test-quick lint format kafka-start kafka-stop topics clean

setup:           ## venv, Python packages, Maven jars, npm packages
	bin/setup

run:             ## the whole stack on this machine; Ctrl-C stops it all
	bin/run

test:            ## the suite CI runs, every fault test included (starts its own broker and Spark)
	bin/test

test-quick:      ## unit tests only: no broker, no Spark (the spark-marked ones are left out), no browser
	bin/setup && .venv/bin/python -m pytest tests/unit -m "not spark"

lint:
	bin/setup && .venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

kafka-start:
	bin/setup && bin/kafka-start

kafka-stop:
	bin/kafka-stop

topics:
	bin/kafka-create-topics

clean:           ## remove local state (broker data, checkpoints, logs)
	bin/kafka-stop || true
	rm -rf state build/test-state
