"""The cell runner (the chain of campaigns) and its trace."""
