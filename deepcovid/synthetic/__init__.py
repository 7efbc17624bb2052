"""Deterministic synthetic chest images, with lung and lesion masks, in the Cohen and CheXpert
layouts: ``render`` draws them (anatomy, findings, style_shift), ``layouts`` writes the files."""

from deepcovid.synthetic.layouts import generate_chexpert, generate_cohen, plan_chexpert

__all__ = ["generate_cohen", "generate_chexpert", "plan_chexpert"]
