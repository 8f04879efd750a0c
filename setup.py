"""What pyproject.toml cannot say: ``recipes/`` installs as the package ``peftrec_recipes``.

The recipes stay at the repository's top level (``accelerate launch recipes/train_rating.py``),
and a wheel ships them, with their configs, beside ``peftrec``, as torchtune ships its recipes.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["peftrec", "peftrec.*"]), "peftrec_recipes"],
    package_dir={"peftrec_recipes": "recipes"},
)
