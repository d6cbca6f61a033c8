"""The `dve-perception` command: every subcommand, the demo, one-frame samples, query reports.

`cli.main` parses the arguments and hands each subcommand to its module here (`python -m
dve_perception.cli` runs it too). Nothing else in the package imports from `cli`: it is the top of
the data flow, beside `ros`.
"""
