"""Tests of the int8 pass (``graphc.passes.int8``), one module per concern."""


def no_speed_guard(spec: str) -> str:
    """``spec`` with ``speed_guard=false`` on its int8 item: tests of placement and numerics
    must not depend on what a timed profile decides (rule 11 has its own tests, with
    injected profiles)."""
    items = spec.split(",")
    return ",".join(f"{item}:speed_guard=false" if item.split(":")[0] == "int8" and "speed_guard" not in item
                    else item for item in items)
