"""Data governance on one node: teams, access records, storage crawls, job reports."""
