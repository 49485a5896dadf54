"""Development helpers shared by the tests and the demo: control plane, processes, certificates, kubectl.

Not part of the installed package: run from the repository's root (`python -m devkit.demo`,
`python -m pytest`), which puts this folder's parent on the import path.
"""
