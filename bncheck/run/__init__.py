"""What bncheck runs on one model: the settings and the plan of every check on every BN layer. Imports the
checks, training, syncbn and core layers."""
