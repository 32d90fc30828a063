"""The `exporter` script and `python -m exporter`: the command line (exporter.cli).

The command line is imported here rather than named by the script, so that a Ctrl-C while its
modules load (the first ~0.3 s) ends quietly with 130, as it does once a command runs, instead
of with a traceback of whichever import it hit.
"""


def main() -> None:
    try:
        from exporter.cli import main as command_line
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    command_line()


if __name__ == "__main__":
    main()
