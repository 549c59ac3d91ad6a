"""Observation of the fleet: aggregation, anomaly detection, alerts and playbooks."""
