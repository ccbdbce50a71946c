"""Published tables (leaderboards/published/*.yaml) and generated boards."""
