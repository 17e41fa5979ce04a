"""The benchmark: embedding cache, one module per task, the evaluator's command line."""
