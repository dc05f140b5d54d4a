"""Recordings from any console into NitroGen training windows.

source (sources.py) -> UniversalVectorProcessor (actions/processor.py) -> episodes (episodes.py)
-> windows (windows.py) -> DataLoader (loader.py); ``pipeline.prepare_data`` wires them together.
Kept import-free: ``actions.processor`` imports ``data.errors``.
"""
