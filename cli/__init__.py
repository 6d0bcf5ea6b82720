"""The `wholecall` command: argparse over every other package (demo, repair, decrypt, recover, stress).

It sits on top of the layers, so `import wholecall.controller` never loads argparse
or the stress harness.
"""
