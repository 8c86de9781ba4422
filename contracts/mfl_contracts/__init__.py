"""What the operator, the model server and the trainer agree on (docs/contracts.md), in one place.

Each image installs this package; none of the three imports another's code. Plain constants and path
functions only: no dependencies, so any component can import it.
"""
