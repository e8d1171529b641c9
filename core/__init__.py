"""Shared parts of cxr-triage: settings, logging, the command line and the preprocessing."""
