"""The sensors' side: the Python client, its outbox, and readings CSV files."""
