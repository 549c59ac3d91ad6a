"""The pure rollout core: phases, policy, gates' statistics, stage evaluation and ``next_state``.

No I/O: no SQL, no HTTP, no clock read; import-linter keeps SQLAlchemy, FastAPI and HTTP clients out.
"""
