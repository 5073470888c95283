"""``python -m serving artefact=ARTEFACT ...``: the same as ``onerec-serve``."""

from serving.cli import main

if __name__ == "__main__":
    main()
