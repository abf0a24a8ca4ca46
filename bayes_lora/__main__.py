"""``python -m bayes_lora``: the ``bayes-lora`` command line (see :mod:`bayes_lora.experiment.cli`)."""
from bayes_lora.experiment.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
