"""The fleet dashboard: server-rendered HTML and SVG behind the admin token."""
