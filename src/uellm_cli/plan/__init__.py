"""Planner: SLO-ODBS scheduler and HELR deployer, judged by one cost model. No torch here."""
