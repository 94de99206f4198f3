"""Hydra plugins of the runner: the streaming sweepers (grid, ask/tell) and the `parallel` launcher.

Hydra loads plugins only from the `hydra_plugins` namespace package and imports every module in
it at each start, even for `--help`: these modules are thin and light; the logic lives in
runner/sweeper.py, runner/search.py and launchers/.
"""
