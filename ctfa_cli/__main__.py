"""``python -m ctfa_cli`` (also what ``torchrun -m ctfa_cli train …`` runs)."""

from ctfa_cli.cli import main

if __name__ == "__main__":
    main()
