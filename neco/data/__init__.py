"""Datasets: registry, canonical-layout reader, download/extract/prepare per dataset."""
