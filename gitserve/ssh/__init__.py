"""git over SSH: a twisted.conch server that runs only git's own commands."""
