"""Version 1 of a Python greeter, for the hot-reload test."""

from weft_plugin import command


@command(name="pygreeter.hello", version="1.0.0")
def hello(name: str) -> str:
    """Greet someone, naming this version."""
    return f"hello {name} from python v1"


_calls = 0


@command(name="pygreeter.calls", version="1.0.0")
def calls() -> int:
    """How many calls this instance has served: module state lives as long as the instance."""
    global _calls
    _calls += 1
    return _calls
