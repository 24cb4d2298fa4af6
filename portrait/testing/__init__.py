"""Random-weight weights trees for tests, CI and rehearsals (no download needed).

``configs``: the components' configurations at the project's tiny sizes; ``real_configs``: at the release's
true sizes; ``components``: one seeded random component, built on the meta device; ``trees``: seeded random
weights written as a weights tree in our layout or in the DICE-Talk release layout, one component at a time;
``synthetic``: a synthetic talking-head task whose answers are known (the learning check's data).
"""
