"""The packages of the wheel: ``brainseg`` and its subpackages, plus ``brainseg._bundled`` (``pyproject.toml`` maps it
onto ``assets/models``: the bundled models, which a package-data glob cannot reach from inside ``brainseg/``)."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["brainseg", "brainseg.*"]), "brainseg._bundled"])
