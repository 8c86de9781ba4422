"""`mfl`: the command line for users of the operator (reads loops, versions and reports)."""
