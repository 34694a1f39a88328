"""OAuth 2.0 authorization server for service providers (FAPI 2.0 style)."""
