"""Launchers: one plan (`plan.py`) rendered for Kubernetes (`k8s.py`), Slurm (`slurm.py`) or run here
(`local.py`). They only decide where a step runs; every job calls the same `neva-prep` command."""
