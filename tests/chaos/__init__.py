"""Chaos suite: faults injected at random (seeded) moments under steady load, then proof nothing was lost."""
