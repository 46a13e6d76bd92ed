"""The edge agent: ingest, the device log, uplink to the gateway, mesh (CPython)."""
