"""Training, from the pure step up to the job ``python -m jaxcnn.train`` runs.

Read it in this order:

- :mod:`~jaxcnn.training.step`: ``loss_fn`` and ``train_step``, the tutorial's step as
  one pure function (with ``state``: the ``TrainState`` it updates);
- :mod:`~jaxcnn.training.loop`: ``train_and_evaluate``, the loop over epochs and
  batches, and ``SyncPoints.at_sync_point``, all it does at a log or checkpoint point;
- :mod:`~jaxcnn.training.job`: what the command does around the loop.

Beside them: ``optim`` (Adam and its schedule), ``timetable`` (when a run logs and
checkpoints), ``parallel`` (devices and shardings), ``compile`` (the steps compiled
once), ``evaluation``, ``scan_loop`` (``--loop scan``), ``checkpoints`` (Orbax),
``workdir`` (a run's files), ``report``, ``signals`` and ``progress``.
"""
