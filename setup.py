"""pyproject.toml says everything about the package but its package list: the checkout's assets/ folder
(the demo backbone and demo prompt sets) ships in the wheel as `server.demo_assets` (pyproject's
package-dir and package-data), so `promptserve serve --demo` works after a plain `pip install` with no
checkout, and a package_dir entry needs the packages listed, which pyproject's `packages.find` cannot extend."""

from setuptools import find_namespace_packages, setup

PROJECT_PACKAGES = ["promptserve*", "kernels*", "prompt_store*", "server*", "training*"]

DEMO_ASSETS = ["server.demo_assets.backbones", "server.demo_assets.tasks"]

setup(packages=find_namespace_packages(include=PROJECT_PACKAGES) + DEMO_ASSETS)
