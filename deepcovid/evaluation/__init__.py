"""Evaluation: statistics, the evaluate stage's metrics and plots, figures, model comparison."""
