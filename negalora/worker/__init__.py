"""The worker process: holds the pipeline between jobs and streams events back as JSON lines.

A crash or an out-of-memory there cannot take the window down: the client sees the pipe close,
says why, and a new worker takes the queued jobs.
"""
