"""The interop matrix (`python -m conformance interop`): every implementation as client
and as server, in the deployments people run.

- `scenarios`: the scenarios, each configured as a user configures the kernel;
- `cell`: one (scenario, client, server) cell in its own topology;
- `evidence`: what the verdicts rest on, from outside the implementations (link byte
  counters, captures of the segments that open and close subflows);
- `matrix`: which cells run, running them, the grids, JSON and JUnit.
"""
