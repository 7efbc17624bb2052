"""Evaluation of prediction tables: the evaluate stage and ``deepcovid compare``.

predictions: reading a predictions file | evaluate: EvalConfig, evaluate() -> EvalResult |
report: OutputPaths, write_outputs | plot_data: plots/*.csv tables | figures: PNGs |
proportions: counts, sensitivity/specificity, intervals (paper's Eq. 3), operating point |
ranking: ROC/PR, average precision, bootstrap AUC | delong: DeLong AUC variance and paired test |
calibration: reliability table, ECE | compare: models side by side | inputs, labels: shared checks, names.
"""
