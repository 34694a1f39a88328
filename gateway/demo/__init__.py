"""Demo-only pieces: fictitious personas, a demo identity provider. Never for real people."""
