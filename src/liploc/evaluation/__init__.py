"""Evaluation of a trained model: metrics, protocols, evaluate, the report, the reference
metric, training overlap."""
