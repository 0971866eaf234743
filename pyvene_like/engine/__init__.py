"""The engine: compile (plan), normalise locations (units), install hooks (hooks), run (runner)."""
