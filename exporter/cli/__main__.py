"""`python -m exporter.cli`: the command line, as the `exporter` script runs it."""

from exporter.cli import main

if __name__ == "__main__":
    main()
