"""Deterministic synthetic radiographs in the Cohen and CheXpert layouts."""

from deepcovid.synthetic.generate import generate_chexpert, generate_cohen

__all__ = ["generate_cohen", "generate_chexpert"]
