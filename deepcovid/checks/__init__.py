"""Checks run by CI outside the pipeline: metric regression and cross-machine reproduction."""
