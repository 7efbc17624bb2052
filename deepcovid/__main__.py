"""``python -m deepcovid COMMAND ...``: see :mod:`deepcovid.cli`."""

from deepcovid.cli import main

raise SystemExit(main())
