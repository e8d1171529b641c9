"""Celery workers: preprocessing and inference of received images, and export to PACS."""
