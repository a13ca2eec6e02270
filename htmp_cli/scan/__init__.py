"""Model-zoo scans: discovery, the SQLite store, executors (local processes, Dask), labels, export."""
