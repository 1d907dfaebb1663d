"""``python -m detector`` (and ``torchrun -m detector train ...``) runs the command line."""

from detector.cli import app

if __name__ == "__main__":
    app()
