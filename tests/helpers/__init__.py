"""What the tests share: budgets, stand-in servers and data, a throw-away SLURM cluster, CLI runs."""
