"""The desired topology: model, loading, secret references and rendering (pure, no Docker)."""
