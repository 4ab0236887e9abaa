"""Optional heavy dependencies, checked in one place with an install hint."""
import importlib

from pathvlm.errors import MissingDependency


def require_package(module: str, extra: str, pip_name: str | None = None):
    """Import ``module`` or raise an error that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"'{module}' is needed here but is not installed: pip install 'pathvlm[{extra}]'"
            + (f" (or pip install {pip_name})" if pip_name else "")
        ) from e
