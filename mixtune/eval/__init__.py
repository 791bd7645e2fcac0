"""Held-out evaluation: evaluation sets, generation, SuperNI metrics, baselines and reports."""
