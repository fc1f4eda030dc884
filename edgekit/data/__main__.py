"""``python -m edgekit.data {cls,det,seg,samples} OUT``: synthetic data without the full CLI."""

from edgekit.data.synth import main

main()
