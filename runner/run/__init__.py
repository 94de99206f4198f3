"""One run: the task function (train), the epoch loop (fit), its callbacks, checkpoints, resume,
signals, data-parallel ranks, the data path and building components from the config.

Imports runner.config and the base modules; never runner.sweep or runner.report. A run knows it may
be a sweep's trial only through its RunContext (the sweep folder) and the objects the config names.
"""
