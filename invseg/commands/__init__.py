"""The commands behind the ``invseg`` CLI: thin functions over runtime, tasks and bench."""
