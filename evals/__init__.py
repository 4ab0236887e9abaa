"""The evaluation harness: pinned tasks (YAML) run against any model, with JSON results and a report."""
