"""Version 2 of a Python greeter, for the hot-reload test."""

from weft_plugin import command


@command(name="pygreeter.hello", version="2.0.0")
def hello(name: str) -> str:
    """Greet someone, naming this version."""
    return f"hello {name} from python v2"
