"""Cases of this area."""
