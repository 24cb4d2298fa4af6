"""Random-weight weights trees for tests, CI and rehearsals (no download needed).

``configs``: the components' configurations at the project's tiny sizes; ``trees``: seeded random weights
written as a weights tree in our layout or in the DICE-Talk release layout.
"""
