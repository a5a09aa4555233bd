"""Entry point for `python -m charlm` (and for `torchrun -m charlm`)."""

from charlm.cli.app import main

if __name__ == "__main__":
    main()
