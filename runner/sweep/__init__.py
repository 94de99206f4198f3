"""Sweeps: the streaming sweeper (ask/tell over a pool of trials), search spaces, the journal that
makes a sweep resumable, early termination (pruning) and Population Based Training.

Imports runner.run, runner.config and the base modules (and launchers' trial pools); never
runner.report.
"""
