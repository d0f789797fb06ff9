"""Getting raw files: resumable HTTP transfer, verified fetch with mirrors, safe extraction.

``transfer.py`` moves one URL to a ``.part`` file with HTTP Range resume and classifies errors as
transient or fatal; ``fetch.py`` tries mirrors with retries and backoff, keeps the ``.part`` in a
locked download cache outside the stage outputs (so a rerun after a failed ``dvc repro``
resumes), checks the checksum before anything uses the file, rejects HTML error pages and
publishes atomically with a ``.verified`` marker; ``archives.py`` describes an archive (URLs,
checksum, size); ``extract.py`` unpacks tar and zip archives into a directory (no member may
escape it) and selects ImageNet's inner tars. Imports only ``neco.io`` (and ``filelock``):
nothing of datasets, models or the method.
"""
