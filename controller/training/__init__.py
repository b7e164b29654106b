"""Training program: the session log, clients, stage progression and the ``history`` report.

* :mod:`.config` -- :class:`TrainingConfig`, the ``training:`` section of the YAML.
* :mod:`.sessions` -- pure session tracking from control ticks.
* :mod:`.progression` -- pure unlock criteria, demotion and the trainer action.
* :mod:`.store` -- the SQLite session log (WAL, migrations, checkpoints).
* :mod:`.writer` -- :class:`SessionLogWriter`, the session log written off the loop with backoff.
* :mod:`.events` -- the wording of the events the program raises (pure builders).
* :mod:`.program` -- :class:`TrainingProgram`, used by the service; never blocks the loop.
* :mod:`.history` -- ``treadmill history``.
"""
