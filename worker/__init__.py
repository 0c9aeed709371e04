"""``bge-runpod-worker``: this service as a RunPod Serverless worker.

A job names a route of the service and its body; the worker answers with what
that route answers over HTTP. The routes are the service's own, called in
process (``worker.asgi``): no port, no second implementation of any dialect.
"""
