"""The controller's HTTP API: the FastAPI app, authentication, routes, metrics and serving."""
