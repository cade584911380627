"""`invseg bench`: one harness (timing, exact bytes, tables, plots) and its suites."""
