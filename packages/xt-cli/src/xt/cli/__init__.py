"""XT command line: xt train, xt convert."""
