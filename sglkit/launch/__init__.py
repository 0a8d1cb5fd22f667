"""Launch: the notebook process lifecycle (spawning, ports, process trees, log relay, the session watchdog)."""
