"""Training settings of the integration tests (params.yaml sections, for Project.set_params)."""

# The session's `edgeloop run` trains less than params.yaml (30 epochs, 15 of pruning fine-tune):
# enough for every gate of params.yaml, which the tests check; model quality is not under test.
# Variant latencies from 100 timed runs, not 500: every variant is timed again on each profile.
TRAINED_PARAMS = {
    "training": {"epochs": 10},
    "compress": {"prune_finetune_epochs": 3, "warmup_runs": 10, "latency_runs": 100},
}
# For tests of a gate's or a command's behaviour, not of the model: the least training that runs
# every stage.
FAST_PARAMS = {"compress": {"prune_finetune_epochs": 1, "warmup_runs": 5, "latency_runs": 50}}
