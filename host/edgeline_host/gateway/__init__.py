"""The cloud gateway: accepts edges, stores records exactly once, serves queries."""
