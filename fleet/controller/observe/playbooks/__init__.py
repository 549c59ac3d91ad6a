"""Remediation playbooks as data: a trigger (alert kind, scope, threshold) and the actions it runs.

``playbooks.yaml`` (or the ``playbooks:`` section of ``params.yaml``)::

    playbooks:
      - name: drift-retrain
        trigger: {kind: input_drift, scope: {class: edge-small}, threshold: 0.25}
        actions:
          - {action: pause_rollout}
          - {action: open_retrain}
          - {action: notify_webhook, url: "https://hooks.example.com/fleet"}
        max_attempts: 3
        backoff_s: 5

A playbook matches an open alert of its ``kind`` whose scope contains every entry of the trigger's
``scope`` and whose value reaches ``threshold``. Each (playbook, alert, action) runs at most once: its
row in ``playbook_runs`` is unique on the three, so a replica, a restart or the next pass never runs it
again. An action that raises is retried after ``backoff_s * 2 ** (attempt - 1)`` until
``max_attempts``, then recorded as ``failed`` with the error; it is not repeated after that. An action
that has nothing to act on records ``skipped`` with the reason.

Actions:

- ``pause_rollout``: pause the model's progressing rollouts (``decide.pause``).
- ``rollback_cohort``: abort the model's open rollouts; every targeted device goes back to stable.
- ``quarantine_device``: the alert's device runs the model's baseline version and takes no new targets.
- ``open_retrain``: write the scope's drifted field data (events and input statistics) to a JSON file
  and create a run of the Prefect deployment ``scheduled-retrain/<deployment>`` through Prefect's REST API with
  the file's path attached; without ``PREFECT_API_URL`` it records ``skipped: no Prefect API``.

The package: ``config`` (the YAML schema and loading), ``actions`` (what each action does) and
``runner`` (matching open alerts to playbooks, claiming, retrying with backoff, recording).
- ``notify_webhook``: POST the alert as JSON to ``url``.
"""
