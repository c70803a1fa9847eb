"""Run the sparselm CLI from a checkout: ``python cli.py train --preset teach``."""

from sparselm.cli import main

if __name__ == "__main__":
    main()
