"""Interoperability with other code: import of the LIP-Loc authors' checkpoints."""
