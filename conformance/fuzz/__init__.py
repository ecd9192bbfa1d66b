"""The differential fuzzer (`python -m conformance fuzz`).

It replays the catalogue's scripted exchanges (`seeds`), with options and fields mutated
(`mutate`), against two IUTs at once (`session`, `engine`), classifies each IUT's answer
into a small comparable outcome (`observe`), and reports the sequences where they differ
(`run`), minimised into a case skeleton (`reproduce`). Known divergences, with a reason
each, are in `known_divergences.json` (`known`). Liveness and resource checks run after
every batch (`health`). See docs/conformance.md, "Fuzzer".
"""
