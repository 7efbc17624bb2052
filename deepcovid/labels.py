"""Label vocabularies shared by the data readers and the synthetic generator.

A leaf module: it imports nothing of the package, so both ``data`` and ``synthetic`` may use it.
"""

#: CheXpert's 14 observation columns, in the order of its ``train.csv``.
CHEXPERT_CATEGORIES = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
