"""The true-size rehearsal behind ``scripts/gpu_check.py``: every stage of a release in its own process.

``runner``: the plan, one child process per stage, its wall time and peak memory, the JSON lines;
``child``: one stage in a process; ``stages``: write, convert, load, render, cache, train (the product's
own entry points); ``gpu_stages``: the CUDA stages (benchmark, memory tiers, long clip, compile);
``targets``: the memory, speed and compile targets; ``cache``: a random training cache for a tree.
Nothing in the package imports this one.
"""
