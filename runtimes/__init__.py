"""edgekit.runtimes: the board SDK.

Imports numpy and, lazily, one backend package — never torch, never ``edgekit.graph`` or
``edgekit.calib`` — so ``pip install edgekit[tflite]`` on a Raspberry Pi pulls no torch.
"""
