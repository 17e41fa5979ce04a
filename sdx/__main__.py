"""``python -m sdx COMMAND ...`` (see sdx.cli)."""

from sdx.cli import main

if __name__ == "__main__":
    main()
