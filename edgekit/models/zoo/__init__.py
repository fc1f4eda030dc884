"""The model zoo. Importing this package registers every model."""

from edgekit.models.zoo import (  # noqa: F401
    bisenet,
    dfanet,
    efficientnet,
    hbonet,
    lighthead,
    lpsnet,
    mobilenetv2,
    mobilenetv3,
    shufflenetv2,
    snet,
    squeezenet,
    thundernet,
)
