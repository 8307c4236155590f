"""The daily retrain: the Prefect flow (`flow.py`) and its deployment (`deployment.py`, `prefect.yaml`)."""
