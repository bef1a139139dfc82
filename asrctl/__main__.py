"""``python -m asrctl`` runs the command line."""

from asrctl.cli.app import main

if __name__ == "__main__":
    main()
