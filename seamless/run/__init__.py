"""One run: its parts built once, the main loop, its folder, its logs, the supervised warm-up."""
