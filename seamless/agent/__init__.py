"""Running agents: the interface an agent sees, the runner of its episodes, tasks, held-out evaluation."""
