"""The replay world (RouterBench, RouteLLM GSM8K): real models' recorded answers, labels and costs
(`tables`) and the World that trains a router on them (`world`)."""
