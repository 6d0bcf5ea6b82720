"""The load harness: in-process load generators, the stress run and its report, test signals.

Sits above the controller (it drives one) and below the CLI; production code never imports it.
"""
