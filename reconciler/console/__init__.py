"""The web console a running controller serves under /ui: the fleet, the server rollout, the plan, the
audit log and the desired state, live as passes end (reconciler.console.web)."""
